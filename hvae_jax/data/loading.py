"""Loading any data set by name (`names.py`): every split as uint8 `[N, H, W, C]` numpy images.

Images stay uint8 on the host (greyscale gets a channel axis of size 1); `preprocess.py` turns
them into model input by the data set's `kind`, `batching.py` cuts them into batches.

A registry name is read from one of its sources (`source`):

* `'npz'`: offline archives `{data_dir}/{name}.npz` (`npz.py`); how real data is used on
  machines without internet.
* `'idx'`: the official idx files of the MNIST family (`idx.py`). With no copy anywhere,
  FashionMNIST and MNIST are fetched into the cache (`download.py`: published checksums
  verified, atomic writes).
* `'tfds'`: `tfds.data_source` (`tfds.py`), which downloads and prepares on first use.
* `'mock'`: tfds' mock data, random images of the right shape, nothing downloaded (`mock.py`).
* `'photos'`: patches of real colour photographs that ship inside scikit-image and
  scikit-learn (`photos.py`), for training CIFAR-shaped models on natural images offline.

`folder:PATH`, `npz:PATH` and `tfds:NAME` name their own source (`source` applies only to
registry names, and 'mock' to tfds names too); their images are brought to `image_shape` by
`conform`'s rule. A low-level shift (`+noise`, `+dim`, `+invert`) is applied last.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

import numpy as np

from hvae_jax.data import (conform, download as download_lib, folder, idx, lowlevel, names, npz,
                           photos, splits, tfds)
from hvae_jax.data.registry import (SOURCES, check_images, default_data_dir, get_spec,
                                    offline_hint)


@dataclasses.dataclass
class ImageSet:
  """Images of one data set's split and what names each of them."""
  images: np.ndarray  # uint8 [N, H, W, C]
  ids: list[str]  # per image: its file's path (folder:), else its index in the split read
  where: str  # where the images came from, in words


def load_images(name: str, split: str, data_dir: Optional[str] = None, source: str = "auto",
                download: bool = True, image_shape: Optional[Sequence[int]] = None
                ) -> np.ndarray:
  """All images of one split as uint8 `[N, H, W, C]` (`load_set(...).images`).

  Args:
    name: a key of `DATASETS` (or an alias), `folder:PATH`, `npz:PATH` or `tfds:NAME`
      (`names.py`), optionally with a low-level shift (`mnist+noise`).
    split: 'train', 'test', ... For tfds any split string tfds accepts ('train[:10%]', ...);
      for a registry npz exactly the `{split}_images` array of the archive; for a folder or
      an archive of one `images` array 'train', 'test' (the seeded split of `splits.py`) or
      'all'; `splits.OOD` for what an OOD set reads (its test split, else every image).
    data_dir: folder with `{name}.npz` archives, idx folders and/or tfds data; default
      `$HVAE_DATA_DIR`, else None (tfds default folder).
    source: for registry names: 'npz', 'idx', 'tfds', 'auto' (npz if `{data_dir}/{name}.npz`
      exists, else idx files if found, else downloaded: FashionMNIST and MNIST's official
      files, tfds otherwise), 'mock' (random images from tfds' mock, also for tfds: names) or
      'photos' (patches of real photographs, splits 'train' and 'test').
    download: when no local copy is found, fetch the official idx files of FashionMNIST and
      MNIST into the cache folder (`download.py`, source 'auto'), and let tfds download
      and prepare other data sets.
    image_shape: `(H, W, C)` the images of a folder:, npz: or tfds: set are brought to
      (required for a folder; None keeps an array's own shape). Registry sets keep theirs.

  Raises:
    ValueError: unknown data set, source or split; unreadable or malformed file; no images.
    FileNotFoundError: the file or folder is not there, or it could not be downloaded
      (`download.DownloadError`).
    RuntimeError: tfds failed (typically: no internet); wraps the original error.
  """
  return load_set(name, split, data_dir, source, download, image_shape).images


def load_set(name: str, split: str, data_dir: Optional[str] = None, source: str = "auto",
             download: bool = True, image_shape: Optional[Sequence[int]] = None, seed: int = 0,
             report: Callable[[str], None] = print) -> ImageSet:
  """The images of one split with what names each (see `load_images`); `seed` seeds a
  low-level shift's noise; `report` gets the notes on what was read and converted."""
  parsed = names.parse(name)
  if source not in SOURCES:
    raise ValueError(f"Unknown source {source!r}; choose one of {SOURCES}.")
  if parsed.source == names.REGISTRY:
    split = "test" if split == splits.OOD else split
    x = _load_registered(parsed.target, split, data_dir, source, download)
    loaded = ImageSet(x, [str(i) for i in range(len(x))], f"{parsed.target} split {split!r}")
  elif parsed.source == "folder":
    x, files = folder.load_folder(parsed.target, split, image_shape, report)
    loaded = ImageSet(x, files, f"folder:{parsed.target}")
  elif parsed.source == "npz":
    x, index, where = npz.load_file(os.path.expanduser(parsed.target), split)
    loaded = ImageSet(conform.conform(x, image_shape, where, report),
                      [str(i) for i in index], where)
  else:
    x, where = tfds.load_named(parsed.target, split, data_dir or default_data_dir(), download,
                               image_shape, mock=source == "mock", report=report)
    loaded = ImageSet(x, [str(i) for i in range(len(x))], where)
  if parsed.shift:
    loaded.images = lowlevel.apply(loaded.images, parsed.shift, seed)
  return loaded


def _load_registered(name: str, split: str, data_dir: Optional[str], source: str,
                     download: bool) -> np.ndarray:
  spec = get_spec(name)
  if source == "photos":
    return check_images(photos.patches(split, spec.image_shape), spec.image_shape,
                        f"photos split {split!r}")
  if data_dir is None:
    data_dir = default_data_dir()
  npz_path = (None if data_dir is None or spec.npz_file is None
              else os.path.join(os.path.expanduser(str(data_dir)), spec.npz_file))
  if source == "npz" or (source == "auto" and npz_path is not None and os.path.isfile(npz_path)):
    return npz.load_archive(name, spec, split, npz_path)
  idx_path = idx.idx_path(spec, split, data_dir)
  if idx_path is None and source == "auto" and download and download_lib.available(name, split):
    # The official file into the cache, verified; offline, one line on how to provide it.
    idx_path = download_lib.fetch(name, split, offline_hint=offline_hint(name))
  if source == "idx" or (source == "auto" and idx_path is not None):
    return idx.load_idx(name, spec, split, data_dir, idx_path)
  # 'auto' falling through to tfds: say where the npz was looked for, if the download fails.
  tried = f" (no offline archive at {npz_path})" if source == "auto" and npz_path else ""
  return tfds.load_registered(name, spec, split, data_dir, download, offline_hint(name),
                              tried, mock=source == "mock")
