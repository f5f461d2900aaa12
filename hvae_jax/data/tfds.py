"""tensorflow_datasets: the registry's data sets through tfds, and any tfds name (`tfds:NAME`).

`tfds.data_source` reads with random access over array_record files and needs no TensorFlow,
also under `tfds.testing.mock_data` (`mock.py`); it downloads and prepares the data set on
first use, and that one-time step does need TensorFlow (tfds 4.9.10's builders use
tf.io.gfile) and importlib_resources. A name outside the registry is read from its image
feature (`image`, or its only `tfds.features.Image`), checked to be uint8, and brought to the
model's shape by `conform`'s rule. tensorflow_datasets is imported when a tfds data set is
read, so that the rest of the package works without it.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np

from hvae_jax.data import conform as conform_lib, mock as mock_lib, splits
from hvae_jax.data.registry import DatasetSpec, check_images

# The split an OOD set reads where the data set has no test split (LSUN has none).
OOD_SPLITS = ("test", "validation", "train")


def _tfds() -> Any:
  # Imported on use: the GPU image has no tfds, and importing it takes seconds.
  import tensorflow_datasets  # pylint: disable=import-outside-toplevel
  return tensorflow_datasets


def split_names(split: str) -> list[str]:
  """Base split names of a tfds split expression, e.g. 'train[:10%]+test' -> [train, test]."""
  return [re.split(r"[\[(]", part, maxsplit=1)[0].strip() for part in split.split("+")]


def _failure(e: Exception, what: str, data_dir: Optional[str], offline: str) -> RuntimeError:
  """One line for a tfds data set that could not be read (typically: no internet)."""
  deps = ""
  if isinstance(e, ImportError):
    # Reading prepared tfds data needs no TF, but download_and_prepare does (tf.io.gfile in
    # the dataset builders), plus importlib_resources.
    deps = (" Preparing a tfds data set the first time needs TensorFlow and "
            "importlib_resources (pip install 'hvae-jax[tf]' importlib_resources).")
  return RuntimeError(f"tfds could not load {what} (data_dir={data_dir}): {type(e).__name__}: "
                      f"{str(e).splitlines()[0].rstrip('.') if str(e) else ''}.{deps} Without "
                      f"internet, use an offline copy instead: {offline}.")


def load_registered(name: str, spec: DatasetSpec, split: str, data_dir: Optional[str],
                    download: bool, offline: str, tried: str = "", mock: bool = False
                    ) -> np.ndarray:
  """A registry data set's split through tfds, uint8 `[N, *spec.image_shape]`; `offline`
  says how to provide it without internet and `tried` where else it was looked for (in the
  RuntimeError when tfds fails)."""
  bad = [s for s in split_names(split) if s not in spec.splits]
  if bad:
    raise ValueError(f"Split {split!r} of {name!r}: unknown split(s) {bad}; available splits: "
                     f"{list(spec.splits)}.")
  try:
    tfds = _tfds()
    # With download=True it runs builder.download_and_prepare() first when the data is missing.
    with mock_lib.mock_data(tfds, mock):
      ds = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=download)
    out = np.empty((len(ds),) + spec.image_shape, np.uint8)  # preallocated: no list of arrays
    for i in range(len(ds)):
      img = np.asarray(ds[i]["image"])
      out[i] = img[..., None] if img.ndim == 2 else img
  except Exception as e:  # noqa: BLE001 -- re-raised with the offline hint
    raise _failure(e, f"{spec.tfds_name!r} split {split!r}{tried}", data_dir, offline) from e
  return check_images(out, spec.image_shape, f"tfds {spec.tfds_name!r} split {split!r}")


class _Column(Sequence):
  """The images of one feature of a tfds data source, read on access."""

  def __init__(self, ds: Any, key: str):
    self.ds, self.key = ds, key

  def __len__(self) -> int:
    return len(self.ds)

  def __getitem__(self, i: int) -> np.ndarray:
    return np.asarray(self.ds[i][self.key])


def image_feature(features: Any, name: str) -> str:
  """The key of the uint8 image feature of a tfds data set's features; ValueError if none."""
  images = [k for k, f in features.items() if isinstance(f, _tfds().features.Image)]
  key = "image" if "image" in images else (images[0] if len(images) == 1 else None)
  if key is None:
    raise ValueError(f"tfds:{name}: " + (
        f"several image features {images}, none called 'image'; this package reads one"
        if images else f"no image feature (its features: {sorted(features)}); it is not a "
        "data set of images") + ".")
  if np.dtype(features[key].np_dtype) != np.uint8:
    raise ValueError(f"tfds:{name}: its image feature {key!r} has dtype "
                     f"{np.dtype(features[key].np_dtype)}, not uint8 pixels.")
  return key


def load_named(name: str, split: str, data_dir: Optional[str], download: bool,
               image_shape: Optional[Sequence[int]], mock: bool = False,
               report: Callable[[str], None] = print) -> tuple[np.ndarray, str]:
  """(uint8 `[N, *image_shape]` images, where they came from) of any tfds data set `name`
  (`tfds:NAME`); `split` `splits.OOD` reads its test split, else validation, else train.

  Raises:
    ValueError: tfds knows no such data set (close names are suggested), or it has no image
      feature of uint8 pixels.
    RuntimeError: tfds failed (typically: no internet to download it).
  """
  tfds = _tfds()
  offline = "an npz archive of its images (npz:PATH) or a folder of them (folder:PATH)"
  try:
    with mock_lib.mock_data(tfds, mock):
      if split == splits.OOD:  # every split's source, to see which there are (none: mock)
        have = tfds.data_source(name, split=None, data_dir=data_dir, download=download)
        split = next((s for s in OOD_SPLITS if s in have), OOD_SPLITS[0])
      ds = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except tfds.core.DatasetNotFoundError:
    # Community data sets would need TensorFlow to list.
    known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split(":")[0], known, n=3)
    raise ValueError(f"tfds:{name}: tensorflow_datasets has no data set {name!r}"
                     + (f"; did you mean {', '.join(close)}?" if close else
                        "; tfds.list_builders() lists them.")) from None
  except Exception as e:  # noqa: BLE001 -- re-raised as one line with the offline ways
    raise _failure(e, f"{name!r} split {split!r}", data_dir, offline) from e
  where = f"tfds:{name} split {split!r}"
  key = image_feature(ds.dataset_info.features, name)
  return conform_lib.conform(_Column(ds, key), image_shape, where, report), where
