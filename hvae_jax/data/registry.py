"""The registry: the data sets known by name, with known offline copies, and where those live.

Any other data set is named by its source instead (`folder:PATH`, `npz:PATH`, `tfds:NAME`,
`names.py`); the registry stays the set of names whose offline archives, idx files and
downloads this package knows.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

DATA_DIR_ENV = "HVAE_DATA_DIR"
SOURCES = ("auto", "npz", "idx", "tfds", "mock", "photos")
# Short names users type for data sets.
ALIASES = {"svhn": "svhn_cropped", "fmnist": "fashion_mnist"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the code needs to know about one data set.

  Attributes:
    image_shape: `(H, W, C)` of one image.
    kind: 'binary' (greyscale; binarized, Bernoulli likelihood) or 'discrete' (colour; uint8
      kept, discretized likelihood).
    tfds_name: name for `tfds.data_source`.
    npz_file: file name of the offline archive inside the data dir, or None if the data set is
      only available through tfds.
    splits: the splits tfds offers (an npz archive may hold fewer; it is checked on load).
    idx_folders: names of a folder holding the data set's official idx files (empty: the
      data set has none).
  """
  image_shape: tuple[int, int, int]
  kind: str
  tfds_name: str
  npz_file: Optional[str]
  splits: tuple[str, ...]
  idx_folders: tuple[str, ...] = ()

  @property
  def channels(self) -> int:
    return self.image_shape[-1]


# Adding a data set = adding one entry here.
DATASETS: dict[str, DatasetSpec] = {
    # 'fashion-mnist' is the Debian package's folder, 'fashion' the official repo's data/fashion.
    "fashion_mnist": DatasetSpec((28, 28, 1), "binary", "fashion_mnist", "fashion_mnist.npz",
                                 ("train", "test"), ("fashion_mnist", "fashion-mnist", "fashion")),
    "mnist": DatasetSpec((28, 28, 1), "binary", "mnist", "mnist.npz", ("train", "test"),
                         ("mnist",)),
    "kmnist": DatasetSpec((28, 28, 1), "binary", "kmnist", None, ("train", "test"), ("kmnist",)),
    "cifar10": DatasetSpec((32, 32, 3), "discrete", "cifar10", "cifar10.npz", ("train", "test")),
    "svhn_cropped": DatasetSpec((32, 32, 3), "discrete", "svhn_cropped", "svhn_cropped.npz",
                                ("train", "test", "extra")),
}


def get_spec(name: str) -> DatasetSpec:
  """The registry entry of `name`; ValueError listing the known names otherwise."""
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}, or name "
                     f"your own: folder:PATH (a folder of images), npz:PATH (an archive of "
                     f"uint8 image arrays) or tfds:NAME (any tensorflow_datasets name).")
  return DATASETS[name]


def default_data_dir() -> Optional[str]:
  """`$HVAE_DATA_DIR` if set and non-empty, else None (tfds then uses its own default)."""
  return os.environ.get(DATA_DIR_ENV) or None


def offline_hint(name: str) -> str:
  """How to give a registry data set offline, as a clause."""
  folders = DATASETS[name].idx_folders
  idx = f", or a subfolder {folders[0]}/ with the official idx files" if folders else ""
  return (f"set --data_dir or ${DATA_DIR_ENV} to a folder holding {name}.npz (uint8 arrays "
          f"'<split>_images' of shape [N, H, W] or [N, H, W, C]){idx}")


def how_to_get(name: str) -> str:
  """The ways to provide a registry data set, as a sentence."""
  return (f"To use it offline, {offline_hint(name)}; or use source='tfds' on a machine with "
          f"internet (tfds name {DATASETS[name].tfds_name!r}).")


def check_images(images: np.ndarray, image_shape: tuple[int, ...], where: str) -> np.ndarray:
  """Validate uint8 dtype and the shape `[N, *image_shape]`; add the channel axis to
  `[N, H, W]`. ValueError naming `where` otherwise."""
  if images.dtype != np.uint8:
    raise ValueError(f"{where}: dtype {images.dtype}, expected uint8 pixels in [0, 255].")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[1:] != tuple(image_shape):
    expected = ", ".join(map(str, image_shape))
    raise ValueError(f"{where}: shape {images.shape}, expected [N, {expected}] "
                     f"(or [N, H, W] for one channel).")
  return images
