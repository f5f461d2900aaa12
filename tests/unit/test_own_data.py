"""Your own data as a data set: names (folder:, npz:, tfds:), folders of image files, npz
archives, any tfds name (on tfds' mock data), the seeded split, the one conversion rule and the
decoded-folder cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from hvae_jax import checks, config as config_lib, data
from hvae_jax.data import conform, folder_cache, image_files, npz, splits


def _lines():
  """A `report` that keeps the lines it gets."""
  lines = []
  return lines, lines.append


def _pixels(n, shape=(28, 28), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
  """A fresh download cache (where decoded folders are kept)."""
  monkeypatch.setenv("HVAE_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


@pytest.fixture()
def mixed(tmp_path):
  """A folder of 7 images of 5 formats, modes and sizes (one in a subfolder), a file that is
  not an image and a text file. Returns the folder and the pixels of its 28x28 greyscale PNG."""
  d = tmp_path / "scans"
  (d / "sub").mkdir(parents=True)
  x = _pixels(7)
  Image.fromarray(x[0]).save(d / "a.png")
  Image.fromarray(x[1]).convert("RGB").save(d / "b.jpg", quality=95)
  Image.fromarray(x[2]).save(d / "c.BMP")
  Image.fromarray(x[3]).resize((56, 28)).save(d / "d.tiff")
  Image.fromarray(x[4]).convert("RGB").save(d / "sub" / "e.webp", lossless=True)
  Image.fromarray(x[5]).resize((40, 40)).save(d / "sub" / "f.png")
  Image.fromarray(x[6]).save(d / "sub" / "g.png")
  (d / "broken.png").write_bytes(b"not a png at all")
  (d / "notes.txt").write_text("not an image")
  return d, x[0]


# ------------------------------------------------------------------------------------- names


def test_names_one_spelling_each_and_short_readable_unique_names():
  assert str(data.parse("fmnist")) == "fashion_mnist"  # aliases still work
  assert data.parse("mnist+noise") == data.DataName("registry", "mnist", "noise")
  assert data.parse("folder:/data/scans") == data.DataName("folder", "/data/scans")
  assert data.parse("folder:/data/a+b") == data.DataName("folder", "/data/a+b")  # not a shift
  assert data.parse("folder:/data/scans+invert").shift == "invert"
  assert data.parse("tfds:lsun/classroom") == data.DataName("tfds", "lsun/classroom")
  shorts = data.short_names(["mnist", "folder:/data/scans/", "npz:/tmp/scans.npz",
                             "tfds:lsun/classroom", "tfds:mnist", "fashion_mnist+noise"],
                            taken=("fm",))
  assert shorts == {"mnist": "mnist", "scans": "folder:/data/scans/",
                    "scans_2": "npz:/tmp/scans.npz",
                    "lsun_classroom": "tfds:lsun/classroom", "mnist_2": "tfds:mnist",
                    "fashion_mnist+noise": "fashion_mnist+noise"}
  assert data.short_names(["folder:/x/fm"], taken=("fm",)) == {"fm_2": "folder:/x/fm"}
  with pytest.raises(ValueError, match="Unknown dataset 'imagenet'.*folder:PATH.*tfds:NAME"):
    data.parse("imagenet")
  with pytest.raises(ValueError, match="names no data set: write folder:<a path>"):
    data.parse("folder:")


def test_spec_of_a_data_set_outside_the_registry_follows_the_model():
  assert data.spec_for("mnist").image_shape == (28, 28, 1)
  spec = data.spec_for("folder:/x", "bernoulli")
  assert (spec.image_shape, spec.kind) == ((28, 28, 1), "binary")
  spec = data.spec_for("tfds:cifar100", "dmol")
  assert (spec.image_shape, spec.kind, spec.tfds_name) == ((32, 32, 3), "discrete", "cifar100")
  assert data.spec_for("npz:/x.npz", "dmol", (64, 64, 3)).image_shape == (64, 64, 3)
  with pytest.raises(ValueError, match="1 \\(greyscale\\) or 3 \\(colour\\) channels"):
    data.spec_for("folder:/x", "bernoulli", (28, 28, 2))
  with pytest.raises(ValueError, match="leave it"):
    data.spec_for("mnist", "bernoulli", (32, 32, 1))


def test_config_takes_any_data_set_name():
  c = config_lib.base_config()
  c.data.name = "folder:/data/scans"
  config_lib.validate(c)  # the folder need not exist to validate (a model outlives its data)
  c.train.image_shape = (32, 32, 1)
  assert data.config_spec(c).image_shape == (32, 32, 1)
  c.data.name = "nowhere:/x"
  with pytest.raises(ValueError, match="config.data.name = 'nowhere:/x': Unknown dataset"):
    config_lib.validate(c)


# ------------------------------------------------------------------------------------ splits


def test_seeded_split_is_disjoint_deterministic_and_stable_when_images_are_added():
  keys = [f"img{i:03d}.png" for i in range(200)]
  test = splits.split_indices(keys, "test", "x")
  train = splits.split_indices(keys, "train", "x")
  assert len(test) == 20 and len(train) == 180 and not set(test) & set(train)
  np.testing.assert_array_equal(test, splits.split_indices(keys, "test", "x"))
  more = keys + [f"new{i}.png" for i in range(10)]
  moved = {keys[i] for i in test} ^ {more[i] for i in splits.split_indices(more, "test", "x")}
  assert len(moved - set(more[200:])) <= 2  # only images at the count's boundary move
  np.testing.assert_array_equal(splits.split_indices(keys, "all", "x"), np.arange(200))
  with pytest.raises(ValueError, match="too few for a train/test split"):
    splits.split_indices(["one.png"], "train", "x")
  with pytest.raises(ValueError, match="no split 'validation'"):
    splits.split_indices(keys, "validation", "x")


# ----------------------------------------------------------------------------------- folders


def test_a_folder_of_mixed_images_is_one_data_set(mixed, cache):
  d, a = mixed
  lines, report = _lines()
  s = data.load_set(f"folder:{d}", "all", image_shape=(28, 28, 1), report=report)
  rel = [os.path.relpath(f, d) for f in s.ids]
  assert rel == ["a.png", "b.jpg", "c.BMP", "d.tiff", "sub/e.webp", "sub/f.png", "sub/g.png"]
  assert s.images.shape == (7, 28, 28, 1) and s.images.dtype == np.uint8
  np.testing.assert_array_equal(s.images[0, ..., 0], a)
  text = "\n".join(lines)
  assert "passed over 1 other file" in text
  assert "skipped 1 file that could not be decoded as images: broken.png" in text
  assert "converted 2 images from RGB to greyscale" in text
  assert ("resized 2 images from 56x28 (1), 40x40 (1) to 28x28 (Lanczos filter, aspect ratio "
          "kept, padded with black)") in text
  assert "(7 images)" in text and "kept a decoded copy in" in text
  assert not any(f.endswith(".npz") for f in os.listdir(d))  # the cache is not in the folder
  assert len(list((cache / "folders").glob("*.npz"))) == 1
  # The splits: seeded, disjoint, together the whole folder.
  train = data.load_set(f"folder:{d}", "train", image_shape=(28, 28, 1), report=report)
  test = data.load_set(f"folder:{d}", "test", image_shape=(28, 28, 1), report=report)
  assert len(test.ids) == 1 and sorted(train.ids + test.ids) == sorted(s.ids)
  # An OOD set reads every image of a folder without train/ and test/ subfolders.
  assert data.load_set(f"folder:{d}", data.OOD_SPLIT, image_shape=(28, 28, 1),
                       report=report).ids == s.ids
  # Colour models get RGB, at their size; the same file gives the same pixels in every mode.
  c = data.load_images(f"folder:{d}", "all", image_shape=(32, 32, 3))
  assert c.shape == (7, 32, 32, 3) and np.all(c[0, ..., 0] == c[0, ..., 2])


def test_the_decoded_copy_is_read_at_once_and_never_stale(mixed, cache, monkeypatch):
  d, _ = mixed
  first = data.load_images(f"folder:{d}", "all", image_shape=(28, 28, 1))
  decoded = []
  real = image_files.load_image
  monkeypatch.setattr(image_files, "load_image",
                      lambda *a, **k: decoded.append(1) or real(*a, **k))
  lines, report = _lines()
  np.testing.assert_array_equal(data.load_images(f"folder:{d}", "all", image_shape=(28, 28, 1)),
                                first)
  second = data.load_set(f"folder:{d}", "all", image_shape=(28, 28, 1), report=report)
  assert not decoded and any("from the decoded copy" in l for l in lines)
  assert any("skipped 1 file" in l for l in lines)  # the notes are kept with the copy
  np.testing.assert_array_equal(second.images, first)
  # Another rule (shape) is another copy; a touched file is decoded again.
  data.load_images(f"folder:{d}", "all", image_shape=(32, 32, 1))
  assert len(decoded) == 8  # every image file, the one that cannot be decoded too
  os.utime(d / "a.png", ns=(1, 1))
  data.load_images(f"folder:{d}", "all", image_shape=(28, 28, 1))
  assert len(decoded) == 16
  assert not list((cache / "folders").glob(".*part"))  # no temporary file left


def test_train_and_test_subfolders_are_the_splits(tmp_path, cache):
  for split, n in (("train", 5), ("test", 3)):
    (tmp_path / split).mkdir()
    for i, x in enumerate(_pixels(n, seed=n)):
      Image.fromarray(x).save(tmp_path / split / f"{i}.png")
  load = lambda split: data.load_set(f"folder:{tmp_path}", split, image_shape=(28, 28, 1),
                                     report=lambda line: None)
  assert len(load("train").ids) == 5 and len(load("test").ids) == 3 and len(load("all").ids) == 8
  assert all(f"{os.sep}test{os.sep}" in f for f in load(data.OOD_SPLIT).ids)


def test_bad_folders_are_one_clear_line(tmp_path, cache, monkeypatch):
  with pytest.raises(FileNotFoundError, match="folder:.*nowhere: no such folder"):
    data.load_images(f"folder:{tmp_path / 'nowhere'}", "all", image_shape=(28, 28, 1))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("x")
  with pytest.raises(ValueError, match=r"empty: no images \(.png, .jpg.*searched recursively\); "
                                       r"1 other file passed over"):
    data.load_images(f"folder:{tmp_path / 'empty'}", "all", image_shape=(28, 28, 1))
  (tmp_path / "x.npz").write_bytes(b"")
  with pytest.raises(ValueError, match="is a file, not a folder of images .*name it npz:PATH"):
    data.load_images(f"folder:{tmp_path / 'x.npz'}", "all", image_shape=(28, 28, 1))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "a.png").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="none of its 1 image files could be decoded"):
    data.load_images(f"folder:{tmp_path / 'bad'}", "all", image_shape=(28, 28, 1))
  (tmp_path / "ok").mkdir()
  Image.fromarray(_pixels(1)[0]).save(tmp_path / "ok" / "a.png")
  monkeypatch.setattr(conform, "MEMORY_FRACTION", 1e-12)  # a machine with almost no memory
  with pytest.raises(ValueError, match="1 images of 28x28x1 take 0.0 GB decoded, more than the "
                                       "limit"):
    data.load_images(f"folder:{tmp_path / 'ok'}", "all", image_shape=(28, 28, 1))
  assert not (cache / "folders").exists()  # refused before any decoding


def test_a_read_only_cache_costs_a_note_not_the_data(mixed, tmp_path, monkeypatch):
  d, _ = mixed
  monkeypatch.setattr(folder_cache, "put", lambda digest, arrays: "no space left")
  lines, report = _lines()
  x = data.load_images(f"folder:{d}", "all", image_shape=(28, 28, 1))
  assert x.shape == (7, 28, 28, 1)
  data.load_set(f"folder:{d}", "all", image_shape=(28, 28, 1), report=report)
  assert any("could not keep a decoded copy (no space left)" in l for l in lines)


# -------------------------------------------------------------------------------------- npz


def test_an_npz_archive_is_a_data_set(tmp_path):
  x = _pixels(30)
  np.savez(tmp_path / "one.npz", images=x)
  np.savez(tmp_path / "split.npz", train_images=x[:20], test_images=x[20:])
  one = lambda split: data.load_set(f"npz:{tmp_path / 'one.npz'}", split)
  train, test = one("train"), one("test")
  assert len(test.ids) == 3 and len(train.ids) == 27
  np.testing.assert_array_equal(test.images[..., 0], x[[int(i) for i in test.ids]])
  assert sorted(map(int, train.ids + test.ids)) == list(range(30))
  assert len(one(data.OOD_SPLIT).ids) == 30  # every image
  two = lambda split: data.load_images(f"npz:{tmp_path / 'split.npz'}", split)
  np.testing.assert_array_equal(two("train")[..., 0], x[:20])
  np.testing.assert_array_equal(two(data.OOD_SPLIT)[..., 0], x[20:])  # the test array
  # A colour archive for a greyscale model: converted, with a note counting the images.
  np.savez(tmp_path / "rgb.npz", images=np.repeat(x[..., None], 3, axis=-1))
  lines, report = _lines()
  g = data.load_set(f"npz:{tmp_path / 'rgb.npz'}", "all", image_shape=(28, 28, 1), report=report)
  np.testing.assert_array_equal(g.images[..., 0], x)
  assert lines == [f"Note: all split of array 'images' of {tmp_path / 'rgb.npz'} (30 images): "
                   "converted 30 images from RGB to greyscale."]


def test_bad_npz_is_one_clear_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file"):
    data.load_images(f"npz:{tmp_path / 'nowhere.npz'}", "train")
  np.savez(tmp_path / "labels.npz", labels=np.arange(3))
  with pytest.raises(ValueError, match=r"no image array for split 'train': it holds \['labels'\], "
                                       r"and needs 'train_images' or one array 'images'"):
    data.load_images(f"npz:{tmp_path / 'labels.npz'}", "train")
  np.savez(tmp_path / "floats.npz", images=np.zeros((3, 28, 28), np.float32))
  with pytest.raises(ValueError, match=r"dtype float32, expected uint8.*\(x \* 255\)"):
    data.load_images(f"npz:{tmp_path / 'floats.npz'}", "all")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(ValueError, match="Could not read the npz archive"):
    data.load_images(f"npz:{tmp_path / 'junk.npz'}", "all")


def test_arrays_handed_over_are_saved_as_an_archive_npz_reads(tmp_path):
  x = _pixels(12)
  path = npz.write(str(tmp_path / "w" / "images.npz"), {"train": x[:8], "test": x[8:]})
  np.testing.assert_array_equal(data.load_images(f"npz:{path}", "test")[..., 0], x[8:])
  assert os.listdir(tmp_path / "w") == ["images.npz"]  # no temporary file left
  with pytest.raises(ValueError, match="dtype int64"):
    npz.write(str(tmp_path / "bad.npz"), np.zeros((2, 4, 4), np.int64))


# ------------------------------------------------------------------------------ tfds (mock)


def test_any_tfds_name_outside_the_registry(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  assert "omniglot" not in data.DATASETS and "cifar100" not in data.DATASETS
  lines, report = _lines()
  with tfds.testing.mock_data(num_examples=4):
    # Omniglot's 105x105 RGB images for a FashionMNIST-shaped model: greyscale, resized.
    s = data.load_set("tfds:omniglot", "test", str(tmp_path), image_shape=(28, 28, 1),
                      report=report)
    c = data.load_images("tfds:cifar100", data.OOD_SPLIT, str(tmp_path))  # its own shape
    lsun = data.load_images("tfds:lsun/classroom", "train", str(tmp_path),
                            image_shape=(32, 32, 3))  # images of many sizes
  assert s.images.shape == (4, 28, 28, 1) and s.ids == ["0", "1", "2", "3"]
  assert lines == ["Note: tfds:omniglot split 'test' (4 images): converted 4 images from RGB to "
                   "greyscale.",
                   "Note: tfds:omniglot split 'test' (4 images): resized 4 images from 105x105 "
                   "to 28x28 (Lanczos filter, aspect ratio kept, padded with black)."]
  assert c.shape == (4, 32, 32, 3) and lsun.shape == (4, 32, 32, 3)
  # The mock source reads tfds: names too.
  assert data.load_images("tfds:cifar100", "test", str(tmp_path), source="mock").shape[0] == (
      data.MOCK_EXAMPLES)


def test_bad_tfds_names_are_one_clear_line(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with pytest.raises(ValueError, match="tensorflow_datasets has no data set 'omniglott'; did you "
                                       "mean omniglot"):
    data.load_images("tfds:omniglott", "test", str(tmp_path))
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match="no image feature"):
      data.load_images("tfds:imdb_reviews", "test", str(tmp_path))


# ---------------------------------------------------------------------------------- shifts


def test_a_low_level_shift_applies_to_any_source(mixed, cache):
  d, a = mixed
  x = data.load_images(f"folder:{d}+invert", "all", image_shape=(28, 28, 1))
  np.testing.assert_array_equal(x[0, ..., 0], 255 - a)


def test_output_paths_are_checked_before_any_work(tmp_path):
  (tmp_path / "file").write_text("x")
  assert checks.writable_path("--csv", str(tmp_path / "x.csv"), folder=False)
  with pytest.raises(ValueError, match="new is not a writable folder"):  # a file's folder must exist
    checks.writable_path("--csv", str(tmp_path / "new" / "x.csv"), folder=False)
  assert checks.writable_path("--output", str(tmp_path / "a" / "b"), folder=True)
  with pytest.raises(ValueError, match="--csv=.*: cannot write a file there \\(it is a folder\\)"):
    checks.writable_path("--csv", str(tmp_path), folder=False)
  with pytest.raises(ValueError, match="cannot write a folder there \\(it is a file\\)"):
    checks.writable_path("--output", str(tmp_path / "file"), folder=True)
  with pytest.raises(ValueError, match="file is not a writable folder"):
    checks.writable_path("--csv", str(tmp_path / "file" / "x.csv"), folder=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created
