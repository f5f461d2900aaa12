"""The 'photos' source (hvae_jax/data/photos.py): real photographs as CIFAR-shaped patches, a
region-disjoint split, and small CIFAR-shaped HVAE and BIVA models training on them."""
import json
import os

import numpy as np
import pytest

from hvae_jax import config as config_lib, data, training
from hvae_jax.data import photos

N_TRAIN, N_TEST = 7037, 2062  # the counts README.md gives


def test_photos_source_gives_deterministic_cifar_shaped_patches():
  train = data.load_images("cifar10", "train", source="photos")
  test = data.load_images("svhn_cropped", "test", source="photos")
  assert train.shape == (N_TRAIN, 32, 32, 3) and test.shape == (N_TEST, 32, 32, 3)
  assert train.dtype == np.uint8
  np.testing.assert_array_equal(train, data.load_images("cifar10", "train", source="photos"))
  train[0] = 0  # callers get their own copy
  assert data.load_images("cifar10", "train", source="photos")[0].any()


def test_patches_are_natural_images_not_noise():
  x = data.load_images("cifar10", "test", source="photos").astype(np.float32)
  # Neighbouring pixels of a photograph are close; of uniform noise, 85 apart on average.
  assert np.abs(np.diff(x, axis=2)).mean() < 15
  assert x.std() > 40  # and the set is not flat: varied photographs


def test_split_regions_are_disjoint_and_cover_each_photo():
  for photo in photos.load_photos():
    regions = photos.split_regions(photo)
    np.testing.assert_array_equal(np.concatenate([regions["train"], regions["test"]], axis=1),
                                  photo)
    assert regions["test"].shape[1] == round(photo.shape[1] * photos.TEST_FRACTION)


def test_test_patches_come_only_from_the_test_regions():
  train = photos.patches("train")
  test = photos.patches("test")
  # At full scale every patch is a window of its region: find each test patch's pixels there.
  test_regions = [photos.split_regions(p)["test"] for p in photos.load_photos()]
  windows = np.concatenate([photos.cut_patches(r, 32, 16) for r in test_regions])
  assert {w.tobytes() for w in windows} <= {t.tobytes() for t in test}
  assert not {t.tobytes() for t in test} & {t.tobytes() for t in train}


def test_cut_patches_windows_at_the_stride():
  image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
  out = photos.cut_patches(image, 4, 2)
  assert out.shape == (2 * 3, 4, 4, 3)  # 2 rows of 3 windows
  np.testing.assert_array_equal(out[2], image[0:4, 4:8])
  np.testing.assert_array_equal(out[5], image[2:6, 4:8])
  assert photos.cut_patches(image, 7, 2).shape == (0, 7, 7, 3)


@pytest.mark.parametrize("name, split, message", [
    ("fashion_mnist", "train", "square colour patches"),
    ("cifar10", "extra", "has the splits")])
def test_bad_requests_say_what_to_do(name, split, message):
  with pytest.raises(ValueError, match=message):
    data.load_images(name, split, source="photos")


def test_config_accepts_the_photos_source():
  c = config_lib.load_config("cifar_hvae", {"data.source": "photos"})
  assert c.data.source == "photos"


# A few tens of steps: plain ELBO training (no warm-up, no free bits) so bits/dim is the loss.
_TRAIN = {"data.source": "photos", "train.batch_size": 32, "train.max_steps": 40,
          "train.warmup_epochs": 0.0, "train.free_bits_epochs": 0.0,
          "train.learning_rate": 2e-3, "train.log_every_steps": 5,
          "train.eval_every_epochs": 1000.0, "train.eval_examples": 256,
          "train.checkpoint_every_steps": 1000, "train.sample_grid": 0, "model.num_mix": 5}
_SMALL_HVAE = {"model.blocks": (((16, 5, 1), (16, 5, 2)), ((16, 3, 1), (16, 3, 2)),
                                ((16, 3, 1), (16, 3, 2))),
               "model.latents": (("conv", 8), ("conv", 4), ("dense", 8))}


@pytest.mark.slow
@pytest.mark.parametrize("config, overrides", [("cifar_hvae", _SMALL_HVAE),
                                               ("cifar_biva:smoke", {})])
def test_small_cifar_models_train_on_photos(tmp_path, config, overrides):
  c = config_lib.load_config(config, {**_TRAIN, **overrides})
  training.train_and_evaluate(c, str(tmp_path))
  with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  bpd = [r["bpd"] for r in rows if r["split"] == "train"]
  assert np.all(np.isfinite(bpd)) and all(r["finite"] for r in rows if r["split"] == "train")
  # Mean of the first two logs (steps 5, 10) vs the last two (35, 40): a real drop.
  assert np.mean(bpd[-2:]) < np.mean(bpd[:2]) - 0.5, bpd
  test = [r["bpd"] for r in rows if r["split"] == "test"]
  assert np.isfinite(test[-1]) and test[-1] < bpd[0], (test, bpd)  # held-out patches too
