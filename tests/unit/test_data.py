"""Tests of hvae_jax.data: the registry and loading (tfds mock, real offline npz, idx files)."""
from __future__ import annotations

import gzip
import importlib.util
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvae_jax import batching, data, preprocess
from hvae_jax.data import download, idx
from tests.helpers import idx_bytes

REPO = pathlib.Path(__file__).resolve().parents[2]
# CI has ../shared/data beside the checkout; scripts/test.sh exports it as HVAE_DATA_DIR.
SHARED_DATA = pathlib.Path(os.environ.get("HVAE_DATA_DIR") or REPO.parent / "shared" / "data")


# ---------------------------------------------------------------------------------- registry


def test_registry():
  assert set(data.DATASETS) >= {"fashion_mnist", "mnist", "cifar10", "svhn_cropped", "kmnist"}
  assert data.DATASETS["fashion_mnist"].image_shape == (28, 28, 1)
  assert data.DATASETS["fashion_mnist"].kind == "binary"
  assert data.DATASETS["cifar10"].channels == 3
  assert data.DATASETS["svhn_cropped"].kind == "discrete"
  assert data.DATASETS["kmnist"].npz_file is None


# ------------------------------------------------------------------------------ tfds (mock)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10", "svhn_cropped", "kmnist"])
def test_tfds_mock(name, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  tf_installed = importlib.util.find_spec("tensorflow") is not None
  spec = data.DATASETS[name]
  with tfds.testing.mock_data(num_examples=6):
    x = data.load_images(name, "test", data_dir=str(tmp_path), source="tfds")
    # 'auto' with no npz in data_dir also goes through tfds, except for the data sets whose
    # official files it downloads instead (test_download.py).
    auto = "tfds" if download.available(name, "train") else "auto"
    y = data.load_images(name, "train", data_dir=str(tmp_path), source=auto)
  assert x.shape == (6,) + spec.image_shape and x.dtype == np.uint8
  assert y.shape == (6,) + spec.image_shape and y.dtype == np.uint8
  if not tf_installed:  # the project's test env has no TF: this path must work without it
    assert "tensorflow" not in sys.modules


def test_mock_source_needs_no_data(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  x = data.load_images("svhn_cropped", "test", data_dir=str(tmp_path), source="mock")
  assert x.shape == (data.MOCK_EXAMPLES, 32, 32, 3) and x.dtype == np.uint8
  assert x.std() > 0 and not any(tmp_path.iterdir())  # random images, nothing downloaded


def test_tfds_failure_is_wrapped(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")

  def offline(*args, **kwargs):
    raise OSError("Name or service not known")

  monkeypatch.setattr(tfds, "data_source", offline)
  with pytest.raises(RuntimeError) as e:
    data.load_images("cifar10", "train", data_dir=str(tmp_path), source="auto")
  msg = str(e.value)
  assert "Name or service not known" in msg and "cifar10.npz" in msg and "HVAE_DATA_DIR" in msg
  assert isinstance(e.value.__cause__, OSError)


def test_tfds_unknown_split():
  with pytest.raises(ValueError, match="available splits"):
    data.load_images("cifar10", "validation", source="tfds")


# ------------------------------------------------------------------------- real offline npz


@pytest.fixture(scope="module")
def shared_dir() -> str:
  assert (SHARED_DATA / "fashion_mnist.npz").is_file(), (
      f"offline data not found at {SHARED_DATA}; set HVAE_DATA_DIR to the folder with "
      "fashion_mnist.npz and mnist.npz")
  return str(SHARED_DATA)


@pytest.fixture(scope="module")
def fmnist_test(shared_dir) -> np.ndarray:
  return data.load_images("fashion_mnist", "test", data_dir=shared_dir, source="npz")


def test_real_fashion_mnist(shared_dir, fmnist_test):
  x = fmnist_test
  assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
  assert x.min() == 0 and x.max() == 255
  assert abs(x.mean() - 73.1) < 1.0  # README: mean pixel 73.1 (test, official split)
  train = data.load_images("fashion_mnist", "train", data_dir=shared_dir)  # 'auto' -> npz
  assert train.shape == (60000, 28, 28, 1) and train.dtype == np.uint8
  assert abs(train.mean() - 72.9) < 1.0  # README: 72.9 (train)


def test_real_mnist(shared_dir):
  x = data.load_images("mnist", "test", data_dir=shared_dir, source="npz")
  assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
  assert x.min() == 0 and x.max() == 255
  assert abs(x.mean() - 33.4) < 1.0  # README: mean pixel 33.4
  with pytest.raises(ValueError, match=r"'train'.*available splits.*\['test'\]"):
    data.load_images("mnist", "train", data_dir=shared_dir, source="npz")


def test_real_slice_pipeline(fmnist_test):
  """A tiny shuffled slice, binarized for evaluation: what the eval loop does."""
  b = batching.Batches(fmnist_test, 64, shuffle=True, seed=0)
  x = next(b.epoch_batches(0))
  assert x.shape == (64, 28, 28, 1) and x.dtype == np.uint8
  xb = preprocess.eval_binarize(x, seed=0)
  assert xb.dtype == np.float32 and set(np.unique(xb)) <= {0.0, 1.0}
  assert abs(xb.mean() - x.mean() / 255) < 0.02
  xk = preprocess.train_input(x, data.DATASETS["fashion_mnist"].kind, key=jax.random.key(0))
  assert xk.shape == x.shape and xk.dtype == jnp.float32


def test_env_data_dir(monkeypatch, tmp_path):
  imgs = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  np.savez(tmp_path / "cifar10.npz", test_images=imgs)
  monkeypatch.setenv("HVAE_DATA_DIR", str(tmp_path))
  np.testing.assert_array_equal(data.load_images("cifar10", "test", source="npz"), imgs)
  np.testing.assert_array_equal(data.load_images("cifar10", "test"), imgs)  # auto -> npz


# ------------------------------------------------------------------------- official idx files


def _write_idx(folder: pathlib.Path, split: str, images: np.ndarray, gz: bool) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / (data.IDX_IMAGES[split] + (".gz" if gz else ""))
  path.write_bytes(gzip.compress(idx_bytes(images)) if gz else idx_bytes(images))
  return path


@pytest.fixture()
def no_system_data(monkeypatch):
  """Tests must not see a Debian-installed /usr/share/datasets/fashion-mnist."""
  monkeypatch.setattr(idx, "SYSTEM_DATA_DIRS", ())


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files(tmp_path, gz, no_system_data):
  imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  _write_idx(tmp_path / "fashion-mnist", "test", imgs, gz)
  _write_idx(tmp_path / "fashion-mnist", "train", imgs[::-1], gz)
  for source in ("idx", "auto"):  # 'auto' finds them when there is no npz
    x = data.load_images("fashion_mnist", "test", data_dir=str(tmp_path), source=source)
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.uint8 and x.flags.writeable
    np.testing.assert_array_equal(x[..., 0], imgs)
  np.testing.assert_array_equal(
      data.load_images("fashion_mnist", "train", data_dir=str(tmp_path))[..., 0], imgs[::-1])
  # data_dir may be the idx folder itself (e.g. /usr/share/datasets/fashion-mnist), but only
  # for the data set it is named after: MNIST's files have the same names.
  x = data.load_images("fashion_mnist", "test", data_dir=str(tmp_path / "fashion-mnist"))
  np.testing.assert_array_equal(x[..., 0], imgs)
  with pytest.raises(FileNotFoundError, match="mnist"):
    data.load_images("mnist", "test", data_dir=str(tmp_path / "fashion-mnist"), source="idx")


def test_idx_system_dir_and_npz_first(tmp_path, monkeypatch):
  imgs = np.full((3, 28, 28), 7, np.uint8)
  _write_idx(tmp_path / "system" / "fashion-mnist", "test", imgs, gz=True)
  monkeypatch.setattr(idx, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))
  (tmp_path / "user").mkdir()
  x = data.load_images("fashion_mnist", "test", data_dir=str(tmp_path / "user"))
  np.testing.assert_array_equal(x[..., 0], imgs)
  np.savez(tmp_path / "user" / "fashion_mnist.npz", test_images=np.zeros((2, 28, 28), np.uint8))
  assert data.load_images("fashion_mnist", "test", data_dir=str(tmp_path / "user")).shape[0] == 2


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:-10], r"7846 bytes, but its header says dimensions \(10, 28, 28\): 7856"),
    (lambda b: b[:10], "does not fit"),
    (lambda b: b"\x1f\x8b" + b[2:], "not an idx file"),
    (lambda b: b[:2] + b"\x0d" + b[3:], r"0x0d \(float32\)"),
], ids=["truncated", "header_cut", "gzip_named_plain", "float_type"])
def test_malformed_idx(tmp_path, corrupt, message, no_system_data):
  path = _write_idx(tmp_path / "mnist", "test", np.zeros((10, 28, 28), np.uint8), gz=False)
  path.write_bytes(corrupt(path.read_bytes()))
  with pytest.raises(ValueError, match=message) as e:
    data.load_images("mnist", "test", data_dir=str(tmp_path))  # 'auto' must not fall back
  assert str(path) in str(e.value) and "official file" in str(e.value)


def test_malformed_idx_gzip_and_shape(tmp_path, no_system_data):
  path = _write_idx(tmp_path / "mnist", "test", np.zeros((4, 28, 28), np.uint8), gz=True)
  path.write_bytes(path.read_bytes()[:40])  # a cut-off download
  with pytest.raises(ValueError, match=f"{path}: cannot be read"):
    data.load_images("mnist", "test", data_dir=str(tmp_path), source="idx")
  path = _write_idx(tmp_path / "kmnist", "test", np.zeros((4, 32, 32), np.uint8), gz=False)
  with pytest.raises(ValueError, match=r"idx file .*shape \(4, 32, 32, 1\)"):
    data.load_images("kmnist", "test", data_dir=str(tmp_path))


def test_idx_missing_and_unsupported(tmp_path, no_system_data):
  with pytest.raises(FileNotFoundError) as e:
    data.load_images("fashion_mnist", "train", data_dir=str(tmp_path), source="idx")
  assert "train-images-idx3-ubyte" in str(e.value) and str(tmp_path / "fashion_mnist") in str(e.value)
  with pytest.raises(ValueError, match="no idx files"):
    data.load_images("cifar10", "test", data_dir=str(tmp_path), source="idx")
  with pytest.raises(ValueError, match="only the splits"):
    data.load_images("mnist", "train[:10%]", data_dir=str(tmp_path), source="idx")


# ---------------------------------------------------------------------------------- errors


def test_unknown_dataset():
  with pytest.raises(ValueError, match="fashion_mnist"):
    data.load_images("imagenet", "test")


def test_unknown_source():
  with pytest.raises(ValueError, match="source"):
    data.load_images("mnist", "test", source="web")


def test_missing_file_and_dir(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    data.load_images("fashion_mnist", "train", data_dir=str(tmp_path), source="npz")
  assert str(tmp_path / "fashion_mnist.npz") in str(e.value)
  assert "source='tfds'" in str(e.value) and "HVAE_DATA_DIR" in str(e.value)
  missing = tmp_path / "no_such_dir"
  with pytest.raises(FileNotFoundError, match=str(missing / "mnist.npz")):
    data.load_images("mnist", "test", data_dir=str(missing), source="npz")


def test_missing_data_dir_setting(monkeypatch):
  monkeypatch.delenv("HVAE_DATA_DIR", raising=False)
  with pytest.raises(FileNotFoundError, match="HVAE_DATA_DIR"):
    data.load_images("mnist", "test", source="npz")


def test_tfds_only_dataset_npz():
  with pytest.raises(ValueError, match="tfds"):
    data.load_images("kmnist", "test", data_dir="/tmp", source="npz")


def test_corrupt_npz(tmp_path):
  path = tmp_path / "mnist.npz"
  path.write_bytes(b"this is not a zip archive \x00\x01\x02" * 10)
  with pytest.raises(ValueError, match=str(path)):
    data.load_images("mnist", "test", data_dir=str(tmp_path), source="npz")
  # 'auto' must not silently fall back to tfds when the archive is there but broken.
  with pytest.raises(ValueError, match=str(path)):
    data.load_images("mnist", "test", data_dir=str(tmp_path))


def test_truncated_npz(tmp_path):
  path = tmp_path / "mnist.npz"
  np.savez_compressed(path, test_images=np.zeros((50, 28, 28), np.uint8))
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match=str(path)):
    data.load_images("mnist", "test", data_dir=str(tmp_path), source="npz")


def test_npy_instead_of_npz(tmp_path):
  path = tmp_path / "mnist.npz"
  with open(path, "wb") as f:
    np.save(f, np.zeros((3, 28, 28), np.uint8))
  with pytest.raises(ValueError, match="not an .npz archive"):
    data.load_images("mnist", "test", data_dir=str(tmp_path), source="npz")


def test_wrong_dtype_and_shape_npz(tmp_path):
  np.savez(tmp_path / "mnist.npz", test_images=np.zeros((3, 28, 28), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    data.load_images("mnist", "test", data_dir=str(tmp_path), source="npz")
  np.savez(tmp_path / "mnist.npz", test_images=np.zeros((3, 32, 32), np.uint8))
  with pytest.raises(ValueError, match=r"shape \(3, 32, 32, 1\)"):
    data.load_images("mnist", "test", data_dir=str(tmp_path), source="npz")
