"""The data-set registry and its loaders: every split as uint8 `[N, H, W, C]` numpy images.

Images stay uint8 on the host (greyscale gets a channel axis of size 1); `preprocess.py` turns
them into model input by the data set's `kind`, `batching.py` cuts them into batches.

Five sources, one API (`load_images`):

* `'npz'`: offline archives `{data_dir}/{name}.npz` with arrays `{split}_images` (uint8
  `[N, H, W]` or `[N, H, W, C]`); this is how real data is used on machines without internet.
* `'idx'`: the official idx files of the MNIST family (`train-images-idx3-ubyte`,
  `t10k-images-idx3-ubyte`, plain or `.gz`), as the official downloads and Debian's
  `apt-get install dataset-fashion-mnist` ship them. MNIST and Fashion-MNIST use the same file
  names, so they are only read from a folder named after the data set (`IDX_FOLDERS`):
  `{data_dir}/<folder>/`, `data_dir` itself when it has that name, the download cache, or
  `/usr/share/datasets/<folder>/` (where the Debian package installs Fashion-MNIST). With no
  copy anywhere, FashionMNIST and MNIST are fetched into the cache (`download.py`: published
  checksums verified, atomic writes).
* `'tfds'`: `tfds.data_source` (random access over array_record files). Reading needs no
  TensorFlow, also under `tfds.testing.mock_data`; it downloads and prepares the data set on
  first use, and that one-time step does need TensorFlow (tfds 4.9.10's builders use
  tf.io.gfile) and importlib_resources.
* `'mock'`: the same tfds path under `tfds.testing.mock_data`: `MOCK_EXAMPLES` random images of
  the right shape per split, nothing downloaded. For smoke runs of the whole pipeline (train ->
  evaluate) where the real data is not at hand, e.g. CIFAR10 -> SVHN offline. Its scores mean
  nothing: the mock draws the same images for every data set and split of one image shape, so
  a mock CIFAR10 -> SVHN run gives AUROC 0.5 by construction.
* `'photos'`: real colour photographs that ship inside scikit-image and scikit-learn, cut into
  patches of a colour data set's shape with a region-disjoint train/test split
  (`hvae_jax/photos.py`). For training CIFAR-shaped models on natural images offline; like the
  mock, every data set of one shape gets the same patches, so OOD scores between them mean
  nothing.

tensorflow_datasets is imported lazily so that the rest of the package works without it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import math
import os
import re
import zipfile
import zlib
from typing import Optional

import numpy as np

from hvae_jax import download as download_lib
from hvae_jax import photos

DATA_DIR_ENV = "HVAE_DATA_DIR"
SOURCES = ("auto", "npz", "idx", "tfds", "mock", "photos")
MOCK_EXAMPLES = 512


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
    raise ValueError(f"Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}.")
  return DATASETS[name]


# Official idx image file of each split (the label files beside them are not needed).
IDX_IMAGES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
# Where system packages install data sets (Debian/Ubuntu: /usr/share/datasets/fashion-mnist).
SYSTEM_DATA_DIRS = ("/usr/share/datasets",)
# idx header type codes (the third magic byte); images must be unsigned bytes.
_IDX_DTYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
               0x0D: "float32", 0x0E: "float64"}


def default_data_dir() -> Optional[str]:
  """`$HVAE_DATA_DIR` if set and non-empty, else None (tfds then uses its own default)."""
  return os.environ.get(DATA_DIR_ENV) or None


# ----------------------------------------------------------------------------------------------
# Loading


def load_images(name: str, split: str, data_dir: Optional[str] = None, source: str = "auto",
                download: bool = True) -> np.ndarray:
  """All images of one split as uint8 `[N, H, W, C]`.

  Args:
    name: a key of `DATASETS`.
    split: 'train', 'test', ... For tfds any split string tfds accepts ('train[:10%]', ...);
      for npz exactly the `{split}_images` array of the archive.
    data_dir: folder with `{name}.npz` archives, idx folders and/or tfds data; default
      `$HVAE_DATA_DIR`, else None (tfds default folder).
    source: 'npz', 'idx', 'tfds', 'auto' (npz if `{data_dir}/{name}.npz` exists, else idx
      files if found, else downloaded: FashionMNIST and MNIST's official files, tfds
      otherwise), 'mock' (random images from tfds' mock, see the module docstring) or 'photos'
      (patches of real photographs, splits 'train' and 'test').
    download: when no local copy is found, fetch the official idx files of FashionMNIST and
      MNIST into the cache folder (`download.py`, source 'auto'), and let tfds download
      and prepare other data sets.

  Raises:
    ValueError: unknown data set, source or split; unreadable or malformed npz or idx file.
    FileNotFoundError: source='npz' or 'idx' and the file is not there, or it could not be
      downloaded (`download.DownloadError`).
    RuntimeError: tfds failed (typically: no internet); wraps the original error.
  """
  spec = get_spec(name)
  if source not in SOURCES:
    raise ValueError(f"Unknown source {source!r}; choose one of {SOURCES}.")
  if source == "photos":
    return _check_images(photos.patches(split, spec.image_shape), spec, f"photos split {split!r}")
  if data_dir is None:
    data_dir = default_data_dir()
  npz_path = _npz_path(spec, data_dir)

  if source == "npz" or (source == "auto" and npz_path is not None and os.path.isfile(npz_path)):
    return _load_npz(name, spec, split, npz_path)
  idx_path = _idx_path(spec, split, data_dir)
  if idx_path is None and source == "auto" and download and download_lib.available(name, split):
    # The official file into the cache, verified; offline, one line on how to provide it.
    idx_path = download_lib.fetch(name, split, offline_hint=_offline_hint(name))
  if source == "idx" or (source == "auto" and idx_path is not None):
    return _load_idx(name, spec, split, data_dir, idx_path)
  # 'auto' falling through to tfds: say where the npz was looked for, if the download fails.
  tried = npz_path if source == "auto" else None
  return _load_tfds(name, spec, split, data_dir, download, tried_npz=tried,
                    mock=source == "mock")


def _npz_path(spec: DatasetSpec, data_dir: Optional[str]) -> Optional[str]:
  if data_dir is None or spec.npz_file is None:
    return None
  return os.path.join(os.path.expanduser(str(data_dir)), spec.npz_file)


def _offline_hint(name: str) -> str:
  folders = DATASETS[name].idx_folders
  idx = f", or a subfolder {folders[0]}/ with the official idx files" if folders else ""
  return (f"set --data_dir or ${DATA_DIR_ENV} to a folder holding {name}.npz (uint8 arrays "
          f"'<split>_images' of shape [N, H, W] or [N, H, W, C]){idx}")


def _how_to_get(name: str, spec: DatasetSpec) -> str:
  return (f"To use it offline, {_offline_hint(name)}; or use source='tfds' on a machine with "
          f"internet (tfds name {spec.tfds_name!r}).")


def _load_npz(name: str, spec: DatasetSpec, split: str, path: Optional[str]) -> np.ndarray:
  if spec.npz_file is None:
    raise ValueError(f"Dataset {name!r} has no offline npz archive; use source='tfds' "
                     f"(tfds name {spec.tfds_name!r}).")
  if path is None:
    raise FileNotFoundError(
        f"No data dir given for the npz archive of {name!r} ({spec.npz_file}). "
        + _how_to_get(name, spec))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Offline archive not found: {path} (dataset {name!r}). "
                            + _how_to_get(name, spec))

  key = f"{split}_images"
  try:
    # allow_pickle=False: garbage or foreign files fail loudly instead of being unpickled.
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError("it holds a single .npy array, not an .npz archive")
    with archive:
      available = sorted(k[:-len("_images")] for k in archive.files if k.endswith("_images"))
      images = archive[key] if key in archive.files else None
  except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError) as e:
    raise ValueError(f"Could not read the npz archive {path}: {type(e).__name__}: "
                     f"{str(e).rstrip('.')}. "
                     f"Replace it with a valid copy. " + _how_to_get(name, spec)) from e

  if images is None:
    raise ValueError(f"Split {split!r} is not in {path}; available splits there: {available} "
                     f"(array '{key}' missing). tfds offers {list(spec.splits)} "
                     f"(source='tfds', needs internet).")
  return _check_images(images, spec, f"array '{key}' of {path}")


def _check_images(images: np.ndarray, spec: DatasetSpec, where: str) -> np.ndarray:
  """Validate dtype/shape against the spec; add the channel axis to `[N, H, W]`."""
  if images.dtype != np.uint8:
    raise ValueError(f"{where}: dtype {images.dtype}, expected uint8 pixels in [0, 255].")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[1:] != spec.image_shape:
    expected = ", ".join(map(str, spec.image_shape))
    raise ValueError(f"{where}: shape {images.shape}, expected [N, {expected}] "
                     f"(or [N, H, W] for one channel).")
  return images


def _idx_folders(spec: DatasetSpec, data_dir: Optional[str]) -> list[str]:
  """Folders that may hold the data set's idx files, in the order they are tried."""
  roots = [download_lib.cache_dir(), *SYSTEM_DATA_DIRS]
  folders = []
  if data_dir is not None:
    data_dir = os.path.expanduser(str(data_dir))
    roots.insert(0, data_dir)
    if os.path.basename(os.path.normpath(data_dir)) in spec.idx_folders:
      folders.append(data_dir)  # the user pointed at the folder of idx files itself
  return folders + [os.path.join(root, f) for root in roots for f in spec.idx_folders]


def _idx_path(spec: DatasetSpec, split: str, data_dir: Optional[str]) -> Optional[str]:
  """The first idx image file of `split` found (plain before .gz), or None."""
  base = IDX_IMAGES.get(split)
  if base is None:
    return None
  for folder in _idx_folders(spec, data_dir):
    for file in (base, base + ".gz"):
      if os.path.isfile(os.path.join(folder, file)):
        return os.path.join(folder, file)
  return None


def _load_idx(name: str, spec: DatasetSpec, split: str, data_dir: Optional[str],
              path: Optional[str]) -> np.ndarray:
  if not spec.idx_folders:
    raise ValueError(f"Dataset {name!r} has no idx files; use source='npz' or 'tfds'.")
  if split not in IDX_IMAGES:
    raise ValueError(f"Split {split!r} of {name!r}: idx files hold only the splits "
                     f"{list(IDX_IMAGES)}.")
  if path is None:
    raise FileNotFoundError(
        f"No idx file {IDX_IMAGES[split]}[.gz] of {name!r} in any of "
        f"{_idx_folders(spec, data_dir)}. Put the official files in a folder named one of "
        f"{list(spec.idx_folders)} inside --data_dir / ${DATA_DIR_ENV}.")
  return _check_images(read_idx(path), spec, f"idx file {path}")


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


def _split_names(split: str) -> list[str]:
  """Base split names of a tfds split expression, e.g. 'train[:10%]+test' -> [train, test]."""
  return [re.split(r"[\[(]", part, maxsplit=1)[0].strip() for part in split.split("+")]


def _load_tfds(name: str, spec: DatasetSpec, split: str, data_dir: Optional[str],
               download: bool, tried_npz: Optional[str] = None, mock: bool = False) -> np.ndarray:
  bad = [s for s in _split_names(split) if s not in spec.splits]
  if bad:
    raise ValueError(f"Split {split!r} of {name!r}: unknown split(s) {bad}; available splits: "
                     f"{list(spec.splits)}.")
  try:
    import tensorflow_datasets as tfds  # lazy: the GPU image has no tfds
    # Random-access source: no TensorFlow needed (tfds.load would need it). With
    # download=True it runs builder.download_and_prepare() first when the data is missing.
    with (tfds.testing.mock_data(num_examples=MOCK_EXAMPLES) if mock
          else contextlib.nullcontext()):
      ds = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=download)
    n = len(ds)
    out = np.empty((n,) + spec.image_shape, np.uint8)  # preallocated: no list of n arrays
    for i in range(n):
      img = np.asarray(ds[i]["image"])
      out[i] = img[..., None] if img.ndim == 2 else img
  except Exception as e:  # noqa: BLE001 -- re-raised with the offline hint
    tried = f" (no offline archive at {tried_npz})" if tried_npz else ""
    deps = ""
    if isinstance(e, ImportError):
      # Reading prepared tfds data needs no TF, but download_and_prepare does (tf.io.gfile
      # in the dataset builders), plus importlib_resources.
      deps = (" Preparing a tfds data set the first time needs TensorFlow and "
              "importlib_resources (pip install 'hvae-jax[tf]' importlib_resources).")
    raise RuntimeError(
        f"tfds could not load {spec.tfds_name!r} split {split!r} (data_dir={data_dir}){tried}: "
        f"{type(e).__name__}: {str(e).rstrip('.')}.{deps} Without internet, use an offline "
        f"copy instead: {_offline_hint(name)}.") from e
  return _check_images(out, spec, f"tfds {spec.tfds_name!r} split {split!r}")
