"""A folder of image files as a data set: `folder:PATH`.

Every PNG/JPEG/BMP/TIFF/WebP file under PATH (`image_files.EXTENSIONS`, any case, searched
recursively, hidden files and folders skipped) is decoded with Pillow and brought to the
model's shape by `conform`'s rule (greyscale or RGB; resized keeping the aspect ratio, padded
with black), with one note per kind of change saying how many images it changed. Files that
cannot be decoded are skipped, with a count and the first few named. The splits: the
`train/` and `test/` subfolders when PATH has both, else the seeded split of `splits.py`
over the files' paths inside PATH; 'all' is every image. The first read shows a progress bar
and keeps a decoded copy (`folder_cache`), so the next run starts at once. A folder whose
decoded images would not fit in memory is refused before it is read (`conform.check_fits`).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from hvae_jax.data import conform, folder_cache, image_files, splits

SUBFOLDERS = ("train", "test")


def _decode(root: str, files: Sequence[str], image_shape: tuple[int, ...], where: str
            ) -> dict[str, np.ndarray]:
  """Every file decoded (progress bar), as the arrays `folder_cache` keeps."""
  conform.check_fits(len(files), image_shape, where)
  out = np.empty((len(files), *image_shape), np.uint8)
  kept, skipped, done = [], [], []
  for f in tqdm(files, desc=f"read {os.path.basename(root)}", unit="img", dynamic_ncols=True):
    try:
      c = image_files.load_image(os.path.join(root, f), image_shape, conform.RESIZE)
    except image_files.ImageFileError:
      skipped.append(f)
      continue
    out[len(kept)] = c.pixels
    kept.append(f)
    done.append(c.conversions)
  notes = image_files.conversion_notes(done, conform.RESIZE)
  if skipped:
    notes.append(f"skipped {len(skipped)} file{'s' * (len(skipped) > 1)} that could not be "
                 f"decoded as images: {image_files.examples(skipped)}")
  return {"images": out[:len(kept)], "files": np.asarray(kept, dtype=str),
          "skipped": np.asarray(skipped, dtype=str), "notes": np.asarray(notes, dtype=str)}


def _read(root: str, files: Sequence[str], image_shape: tuple[int, ...], where: str,
          report: Callable[[str], None]) -> dict[str, np.ndarray]:
  """The decoded folder, from the cache or decoded now (and cached)."""
  digest = folder_cache.key(root, files, image_shape, conform.RESIZE)
  arrays = folder_cache.get(digest)
  if arrays is not None:
    report(f"Read {where}: {len(arrays['files'])} images from the decoded copy "
           f"{folder_cache.path_of(digest)}.")
  else:
    t0 = time.time()
    arrays = _decode(root, files, image_shape, where)
    if not len(arrays["files"]):
      raise ValueError(f"{where}: none of its {len(files)} image files could be decoded "
                       f"({image_files.examples(list(arrays['skipped']))}).")
    problem = folder_cache.put(digest, arrays)
    kept = (f"kept a decoded copy in {folder_cache.path_of(digest)}" if problem is None else
            f"could not keep a decoded copy ({problem}), so the next run decodes it again")
    report(f"Read {where}: {len(arrays['files'])} images in {time.time() - t0:.1f} s; {kept}.")
  for note in arrays["notes"]:
    report(f"Note: {where} ({len(arrays['files'])} images): {note}.")
  return arrays


def _split(files: Sequence[str], split: str, subfolders: bool, where: str) -> np.ndarray:
  """The indices of `split` among the decoded `files` (paths inside the folder)."""
  if split == splits.OOD:
    split = "test" if subfolders else "all"
  if not subfolders or split == "all":
    return splits.split_indices(files, split, where)
  if split not in SUBFOLDERS:
    raise ValueError(f"{where}: no split {split!r}; its splits are its subfolders "
                     f"{list(SUBFOLDERS)}, and 'all'.")
  index = np.flatnonzero([f.split(os.sep, 1)[0] == split for f in files])
  if not len(index):
    raise ValueError(f"{where}: its {split}/ subfolder holds no image that could be decoded.")
  return index


def load_folder(path: str, split: str, image_shape: Optional[Sequence[int]],
                report: Callable[[str], None] = print) -> tuple[np.ndarray, list[str]]:
  """(uint8 `[N, *image_shape]` images of `split`, the path of each image's file).

  `split` is 'train', 'test', 'all' or `splits.OOD` (the test/ subfolder if there is one,
  else every image).

  Raises:
    FileNotFoundError: no such folder.
    ValueError: a file, not a folder; no images in it; no image could be decoded; no such
      split; no `image_shape`; too large for memory.
  """
  where = f"folder:{path}"
  root = os.path.expanduser(path)
  if not os.path.exists(root):
    raise FileNotFoundError(f"{where}: no such folder.")
  if not os.path.isdir(root):
    npz = " (an npz archive: name it npz:PATH)" if root.endswith(".npz") else ""
    raise ValueError(f"{where} is a file, not a folder of images{npz}.")
  if image_shape is None:
    raise ValueError(f"{where}: give the shape [H, W, C] to bring its images to.")
  found, passed_over = image_files.find_images([root])
  files = [os.path.relpath(f, root) for f in found]
  other = f"{passed_over} other file{'s' * (passed_over > 1)}"
  if not files:
    raise ValueError(f"{where}: no images ({', '.join(image_files.EXTENSIONS)}, searched "
                     f"recursively)" + (f"; {other} passed over" if passed_over else "") + ".")
  if passed_over:
    report(f"Note: {where}: passed over {other}, not of the image types "
           f"{'/'.join(image_files.EXTENSIONS)}.")
  arrays = _read(root, files, tuple(image_shape), where, report)
  subfolders = all(os.path.isdir(os.path.join(root, s)) for s in SUBFOLDERS)
  index = _split(list(arrays["files"]), split, subfolders, where)
  return arrays["images"][index], [os.path.join(root, f) for f in arrays["files"][index]]
