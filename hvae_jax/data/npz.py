"""npz archives: the registry's offline copies `{data_dir}/{name}.npz` and any archive named
`npz:PATH`.

Both hold uint8 arrays `{split}_images` (`[N, H, W]` or `[N, H, W, C]`); an archive named by
path may instead hold one array `images`, split by `splits.split_indices` (its keys are the
images' indices). `allow_pickle=False` throughout: garbage or foreign files fail loudly instead
of being unpickled.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from typing import Callable, Mapping, Optional, Union

import numpy as np

from hvae_jax.data import conform, splits
from hvae_jax.data.registry import DatasetSpec, check_images, how_to_get

SUFFIX = "_images"


def read(path: str, pick: Callable[[list[str]], Optional[str]], fix: str
         ) -> tuple[list[str], Optional[str], Optional[np.ndarray]]:
  """(the archive's array names, the one `pick(names)` chose or None, that array or None).

  Raises:
    ValueError: naming `path` and ending with `fix`, when it is not a readable npz archive.
  """
  try:
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError("it holds a single .npy array, not an .npz archive")
    with archive:
      key = pick(list(archive.files))
      return list(archive.files), key, (archive[key] if key is not None else None)
  except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError) as e:
    raise ValueError(f"Could not read the npz archive {path}: {type(e).__name__}: "
                     f"{str(e).rstrip('.')}. {fix}") from e


def load_archive(name: str, spec: DatasetSpec, split: str, path: Optional[str]) -> np.ndarray:
  """A registry data set's split from its offline archive `path` (None: no data dir given)."""
  if spec.npz_file is None:
    raise ValueError(f"Dataset {name!r} has no offline npz archive; use source='tfds' "
                     f"(tfds name {spec.tfds_name!r}).")
  if path is None:
    raise FileNotFoundError(f"No data dir given for the npz archive of {name!r} "
                            f"({spec.npz_file}). " + how_to_get(name))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Offline archive not found: {path} (dataset {name!r}). "
                            + how_to_get(name))
  key = f"{split}{SUFFIX}"
  files, _, images = read(path, lambda files: key if key in files else None,
                          "Replace it with a valid copy. " + how_to_get(name))
  if images is None:
    available = sorted(k[:-len(SUFFIX)] for k in files if k.endswith(SUFFIX))
    raise ValueError(f"Split {split!r} is not in {path}; available splits there: {available} "
                     f"(array '{key}' missing). tfds offers {list(spec.splits)} "
                     f"(source='tfds', needs internet).")
  return check_images(images, spec.image_shape, f"array '{key}' of {path}")


def load_file(path: str, split: str) -> tuple[np.ndarray, np.ndarray, str]:
  """(images of `split`, their indices in the array read, where they came from) of the
  archive `npz:PATH`; `split` `splits.OOD` reads the test array if there is one, else all images.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not an npz archive, or no array of this split and no `images` array.
  """
  where = f"npz:{path}"
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{where}: no such file" + (" (it is a folder: name it folder:"
                            f"{path})" if os.path.isdir(path) else ""))
  wanted = ("test", "all") if split == splits.OOD else (split,)

  def pick(files: list[str]) -> Optional[str]:
    for s in wanted:
      if s != "all" and f"{s}{SUFFIX}" in files:
        return f"{s}{SUFFIX}"
    return "images" if "images" in files else None

  files, key, images = read(path, pick, "Save one with np.savez(path, images=x) or "
                            "np.savez(path, train_images=a, test_images=b).")
  if images is None:
    raise ValueError(f"{where}: no image array for split {wanted[0]!r}: it holds "
                     f"{sorted(files) or 'no arrays'}, and needs '{wanted[0]}{SUFFIX}' or one "
                     f"array 'images' (uint8 [N, H, W] or [N, H, W, C]) to split.")
  if key != "images":
    return images, np.arange(len(images)), f"array '{key}' of {path}"
  split = "all" if split == splits.OOD else split
  index = splits.split_indices([str(i) for i in range(len(images))], split, where)
  return images[index], index, f"{split} split of array 'images' of {path}"


def save(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """`np.savez(path, **arrays)`, written to a hidden temporary file beside `path` and renamed,
  so a killed run never leaves a partial archive. OSError if it cannot be written."""
  fd, part = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part",
                              dir=os.path.dirname(path) or ".")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(part, path)
  finally:
    if os.path.exists(part):
      os.remove(part)


def write(path: str, images: Union[np.ndarray, Mapping[str, np.ndarray]]) -> str:
  """Saves uint8 images `[N, H, W(, C)]` as an archive `npz:PATH` reads (one `images` array,
  split as `splits.py` says; or `{split: images}` as `{split}_images` arrays); returns the
  absolute path.

  Raises:
    ValueError: not uint8 image arrays (`conform.conform`'s checks).
  """
  given = {"images": images} if isinstance(images, np.ndarray) else {
      f"{split}{SUFFIX}": x for split, x in images.items()}
  arrays = {k: conform.conform(x, None, f"images {k!r}") for k, x in given.items()}
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save(path, arrays)
  return path
