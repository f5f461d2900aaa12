"""Tests of hvae_jax.data: loading (tfds mock + real offline npz), preprocessing, batches, sharding."""
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

from hvae_jax import data, download
from tests.helpers import idx_bytes

REPO = pathlib.Path(__file__).resolve().parents[1]
# CI has ../shared/data beside the checkout; scripts/test.sh exports it as HVAE_DATA_DIR.
SHARED_DATA = pathlib.Path(os.environ.get("HVAE_DATA_DIR") or REPO.parent / "shared" / "data")


def ids(batch: np.ndarray) -> list[int]:
  """Example ids of a batch of `_indexed` images."""
  return [int(v) for v in batch[:, 0, 0, 0]]


def _indexed(n: int) -> np.ndarray:
  """uint8 `[n, 2, 2, 1]` images whose pixels all equal their index."""
  return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 1)).copy()


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
  b = data.Batches(fmnist_test, 64, shuffle=True, seed=0)
  x = next(b.epoch_batches(0))
  assert x.shape == (64, 28, 28, 1) and x.dtype == np.uint8
  xb = data.eval_binarize(x, seed=0)
  assert xb.dtype == np.float32 and set(np.unique(xb)) <= {0.0, 1.0}
  assert abs(xb.mean() - x.mean() / 255) < 0.02
  xk = data.preprocess(x, data.DATASETS["fashion_mnist"].kind, key=jax.random.key(0))
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
  monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", ())


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
  monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (str(tmp_path / "system"),))
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


# ---------------------------------------------------------------------------- binarization


def test_binarize_statistics():
  x = np.tile(np.arange(256, dtype=np.uint8), (4000, 1))  # every pixel value, 4000 draws each
  b = jax.jit(data.binarize)(jax.random.key(0), x)
  assert b.dtype == jnp.float32 and b.shape == x.shape
  b = np.asarray(b)
  assert set(np.unique(b)) == {0.0, 1.0}
  np.testing.assert_allclose(b.mean(0), np.arange(256) / 255, atol=0.04)
  assert b[:, 0].max() == 0 and b[:, 255].min() == 1
  b2 = np.asarray(data.binarize(jax.random.key(1), x))
  assert (b != b2).any()
  np.testing.assert_array_equal(b, np.asarray(data.binarize(jax.random.key(0), x)))


def test_binarize_rejects_floats():
  with pytest.raises(TypeError):
    data.binarize(jax.random.key(0), np.zeros((2, 2), np.float32))


def test_eval_binarize():
  # 2000 distinct images (the last pixel numbers them), each a ramp 0..255.
  x = np.tile(np.arange(257, dtype=np.uint16), (2000, 1))
  x[:, -1] = np.arange(2000) % 256
  x[:, -2] = np.arange(2000) // 256
  x = x.astype(np.uint8)
  a = data.eval_binarize(x, seed=0)
  assert a.dtype == np.float32 and a.shape == x.shape and set(np.unique(a)) == {0.0, 1.0}
  np.testing.assert_array_equal(a, data.eval_binarize(x, seed=0))
  assert (a != data.eval_binarize(x, seed=1)).any()
  np.testing.assert_allclose(a.mean(0)[:-2], np.arange(255) / 255, atol=0.05)


def test_eval_binarize_is_per_image():
  """An image's binarization depends on the image and the seed only: not on its position or
  the other images in the call (so its scores and verdict do not either)."""
  x = np.random.default_rng(0).integers(0, 256, (50, 6, 6, 1), dtype=np.uint8)
  a = data.eval_binarize(x, seed=3)
  perm = np.random.default_rng(1).permutation(50)
  np.testing.assert_array_equal(data.eval_binarize(x[perm], seed=3), a[perm])
  np.testing.assert_array_equal(data.eval_binarize(x[7:8], seed=3), a[7:8])
  twice = data.eval_binarize(np.concatenate([x[:1], x[:1]]), seed=3)
  np.testing.assert_array_equal(twice[0], twice[1])


def test_preprocess():
  x = np.full((2, 4, 4, 3), 7, np.uint8)
  out = data.preprocess(x, "discrete")
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, x)
  with pytest.raises(ValueError, match="key"):
    data.preprocess(x, "binary")
  with pytest.raises(ValueError, match="kind"):
    data.preprocess(x, "continuous", key=jax.random.key(0))


# --------------------------------------------------------------------------------- batches


def test_batches_drop_remainder_and_shuffle():
  x = _indexed(10)
  b = data.Batches(x, 3, shuffle=True, seed=0)
  assert b.num_batches == len(b) == 3
  e0 = [ids(y) for y in b.epoch_batches(0)]
  assert all(len(y) == 3 for y in e0)
  flat = sum(e0, [])
  assert len(set(flat)) == 9 and set(flat) <= set(range(10))
  assert e0 == [ids(y) for y in data.Batches(x, 3, shuffle=True, seed=0).epoch_batches(0)]
  assert e0 != [ids(y) for y in b.epoch_batches(1)]
  assert e0 != [ids(y) for y in data.Batches(x, 3, shuffle=True, seed=1).epoch_batches(0)]
  assert flat != list(range(9))


def test_batches_no_shuffle_keep_remainder():
  b = data.Batches(_indexed(10), 4, shuffle=False, drop_remainder=False)
  got = [ids(y) for y in b.epoch_batches(3)]
  assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and b.num_batches == 3


def test_batches_pad_with_mask():
  b = data.Batches(_indexed(10), 4, shuffle=True, seed=3, drop_remainder=False, pad=True)
  batches = list(b.epoch_batches(0))
  assert len(batches) == b.num_batches == 3
  for images, mask in batches:
    assert images.shape == (4, 2, 2, 1) and images.dtype == np.uint8
    assert mask.shape == (4,) and mask.dtype == bool
  np.testing.assert_array_equal(batches[-1][1], [True, True, False, False])
  assert (batches[-1][0][2:] == 0).all()
  seen = sum((ids(im[m]) for im, m in batches), [])
  assert sorted(seen) == list(range(10))  # every example exactly once


def test_batches_bad_arguments():
  with pytest.raises(ValueError):
    data.Batches(_indexed(10), 4, shuffle=False, drop_remainder=True, pad=True)
  with pytest.raises(ValueError):
    data.Batches(_indexed(3), 4, shuffle=False)
  with pytest.raises(ValueError):
    data.Batches(_indexed(3), 0, shuffle=False)


def test_batches_resume():
  b = data.Batches(_indexed(11), 3, shuffle=True, seed=5)  # 3 batches per epoch
  run = []
  for step, y in b.iterate(0):
    run.append((step, ids(y)))
    if step == 9:
      break
  assert [s for s, _ in run] == list(range(10))
  assert [i for _, i in run[3:6]] == [ids(y) for y in b.epoch_batches(1)]
  for start in (0, 2, 3, 7):
    resumed = data.Batches(_indexed(11), 3, shuffle=True, seed=5)  # fresh object, as on restart
    it = resumed.iterate(start)
    got = [(s, ids(y)) for s, y in (next(it) for _ in range(10 - start))]
    assert got == run[start:]


# -------------------------------------------------------------------------------- sharding


@pytest.fixture(scope="module")
def cpus():
  devs = jax.devices("cpu")
  # Two simulated CPU devices (XLA_FLAGS from conftest / scripts/test.sh): the sharded path must
  # really run, so this is an assertion, not a skip.
  assert len(devs) >= 2, "need XLA_FLAGS=--xla_force_host_platform_device_count=2"
  return devs[:2]


def test_shard_batch_pmap(cpus):
  x = _indexed(8)
  mask = np.ones((8,), bool)
  sx, sm = data.shard_batch((x, mask), devices=cpus)
  assert sx.shape == (2, 4, 2, 2, 1) and sm.shape == (2, 4)
  np.testing.assert_array_equal(sx[1, 0], x[4])
  sums = jax.pmap(lambda a: a.astype(jnp.int32).sum(), devices=cpus)(sx)
  np.testing.assert_array_equal(np.asarray(sums), [x[:4].sum(), x[4:].sum()])
  with pytest.raises(ValueError, match="divisible"):
    data.shard_batch(_indexed(7), devices=cpus)


def test_shard_batch_default_devices():
  n = jax.local_device_count()
  assert data.shard_batch(np.zeros((2 * n, 3))).shape == (n, 2, 3)


def test_shard_to_mesh(cpus):
  mesh = data.make_data_mesh(cpus)
  assert mesh.shape["data"] == 2
  x = _indexed(8)
  y = data.shard_to_mesh(x, mesh)
  shards = sorted(y.addressable_shards, key=lambda s: s.index[0].start)
  assert len(shards) == 2 and {s.device for s in shards} == set(cpus)
  np.testing.assert_array_equal(np.asarray(shards[0].data), x[:4])
  np.testing.assert_array_equal(np.asarray(shards[1].data), x[4:])
  # A jitted reduction over the sharded batch is correct.
  total = jax.jit(lambda a: a.astype(jnp.int32).sum())(y)
  assert int(total) == int(x.astype(np.int64).sum())
  with pytest.raises(ValueError, match="divisible"):
    data.shard_to_mesh(_indexed(5), mesh)


def test_make_data_mesh_default():
  assert data.make_data_mesh().shape["data"] == jax.device_count()


def test_process_rows_read_and_placed(cpus):
  """One process holds every row; Batches(rows=...) reads them, from_process_rows places them
  as shard_to_mesh would (the multi-process split itself: tests/test_multiprocess.py)."""
  mesh = data.make_data_mesh(cpus)
  rows = data.process_rows(8, mesh)
  assert rows == slice(0, 8)
  x = _indexed(20)
  whole = data.Batches(x, 8, shuffle=True, seed=3)
  part = data.Batches(x, 8, shuffle=True, seed=3, rows=slice(2, 6))
  for (s, a), (t, b) in zip(whole.iterate(1), part.iterate(1)):
    assert s == t and np.array_equal(a[2:6], b)
    if s == 4:
      break
  y = data.from_process_rows(x[:8], 8, mesh)
  assert y.sharding == data.shard_to_mesh(x[:8], mesh).sharding
  np.testing.assert_array_equal(np.asarray(y), x[:8])
  with pytest.raises(ValueError, match="divisible"):
    data.from_process_rows(x[:5], 5, mesh)
  with pytest.raises(ValueError, match="rows needs pad=False"):
    data.Batches(x, 8, shuffle=False, drop_remainder=False, pad=True, rows=slice(0, 4))
