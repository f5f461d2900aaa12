"""The official idx files of the MNIST family (`train-images-idx3-ubyte`,
`t10k-images-idx3-ubyte`, plain or `.gz`), as the official downloads and Debian's
`apt-get install dataset-fashion-mnist` ship them.

MNIST and Fashion-MNIST use the same file names, so they are only read from a folder named
after the data set (`DatasetSpec.idx_folders`): `{data_dir}/<folder>/`, `data_dir` itself when
it has that name, the download cache, or `/usr/share/datasets/<folder>/` (where the Debian
package installs Fashion-MNIST).
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from typing import Optional

import numpy as np

from hvae_jax.data import download as download_lib
from hvae_jax.data.registry import DATA_DIR_ENV, DatasetSpec, check_images

# Official idx image file of each split (the label files beside them are not needed).
IDX_IMAGES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
# Where system packages install data sets (Debian/Ubuntu: /usr/share/datasets/fashion-mnist).
SYSTEM_DATA_DIRS = ("/usr/share/datasets",)
# idx header type codes (the third magic byte); images must be unsigned bytes.
_IDX_DTYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
               0x0D: "float32", 0x0E: "float64"}


def idx_folders(spec: DatasetSpec, data_dir: Optional[str]) -> list[str]:
  """Folders that may hold the data set's idx files, in the order they are tried."""
  roots = [download_lib.cache_dir(), *SYSTEM_DATA_DIRS]
  folders = []
  if data_dir is not None:
    data_dir = os.path.expanduser(str(data_dir))
    roots.insert(0, data_dir)
    if os.path.basename(os.path.normpath(data_dir)) in spec.idx_folders:
      folders.append(data_dir)  # the user pointed at the folder of idx files itself
  return folders + [os.path.join(root, f) for root in roots for f in spec.idx_folders]


def idx_path(spec: DatasetSpec, split: str, data_dir: Optional[str]) -> Optional[str]:
  """The first idx image file of `split` found (plain before .gz), or None."""
  base = IDX_IMAGES.get(split)
  if base is None:
    return None
  for folder in idx_folders(spec, data_dir):
    for file in (base, base + ".gz"):
      if os.path.isfile(os.path.join(folder, file)):
        return os.path.join(folder, file)
  return None


def load_idx(name: str, spec: DatasetSpec, split: str, data_dir: Optional[str],
             path: Optional[str]) -> np.ndarray:
  """The images `[N, H, W, 1]` of `split` from the idx file at `path` (None: not found)."""
  if not spec.idx_folders:
    raise ValueError(f"Dataset {name!r} has no idx files; use source='npz' or 'tfds'.")
  if split not in IDX_IMAGES:
    raise ValueError(f"Split {split!r} of {name!r}: idx files hold only the splits "
                     f"{list(IDX_IMAGES)}.")
  if path is None:
    raise FileNotFoundError(
        f"No idx file {IDX_IMAGES[split]}[.gz] of {name!r} in any of "
        f"{idx_folders(spec, data_dir)}. Put the official files in a folder named one of "
        f"{list(spec.idx_folders)} inside --data_dir / ${DATA_DIR_ENV}.")
  return check_images(read_idx(path), spec.image_shape, f"idx file {path}")


def read_idx(path: str) -> np.ndarray:
  """The uint8 array of an idx file (plain or gzipped), e.g. `[N, 28, 28]` images.

  Raises:
    ValueError: naming `path`, when it is unreadable, not an unsigned-byte idx file, or its
      size does not match the dimensions its header gives (e.g. a truncated download).
  """
  def bad(what: str) -> ValueError:
    return ValueError(f"idx file {path}: {what}. Replace it with an intact copy of the "
                      f"official file.")
  try:
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    raise bad(f"cannot be read ({type(e).__name__}: {str(e).rstrip('.')})") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise bad(f"not an idx file (magic number {raw[:4].hex() or 'missing'}, expected 0000 "
              f"followed by a type code and the number of dimensions)")
  code, ndim = raw[2], raw[3]
  if code != 0x08:
    raise bad(f"data type code 0x{code:02x} ({_IDX_DTYPES.get(code, 'unknown')}), expected "
              f"0x08 (unsigned byte pixels)")
  header = 4 + 4 * ndim
  if ndim == 0 or len(raw) < header:
    raise bad(f"header of {ndim} dimensions does not fit in {len(raw)} bytes")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  if len(raw) != header + math.prod(dims):
    raise bad(f"{len(raw)} bytes, but its header says dimensions {dims}: "
              f"{header + math.prod(dims)} bytes (truncated or padded)")
  # A copy: arrays over `raw` would be read-only, unlike every other source's.
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()
