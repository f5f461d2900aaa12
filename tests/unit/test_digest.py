"""The model digest (score caches, thresholds) hashes what the scores depend on: the weights
and the config keys that change the computation, not every key that exists."""
import jax
import pytest

from hvae_jax import config as config_lib
from hvae_jax import load_model

SHIPPED = "pretrained/fmnist_hvae_small"


@pytest.fixture()
def model():
  return load_model(SHIPPED)


def test_every_model_and_data_key_says_whether_it_changes_a_score():
  c = config_lib.base_config()
  keys = {f"{s}.{k}" for s in ("model", "data") for k in c[s].keys()}
  score, other = set(config_lib.SCORE_KEYS), set(config_lib.NOT_SCORE_KEYS)
  assert not score & other
  assert keys == score | other, ("classify the new keys in config.SCORE_KEYS or NOT_SCORE_KEYS",
                                 sorted(keys ^ (score | other)))


@pytest.mark.parametrize("section,key,value", [
    ("eval", "batch_size", 7), ("eval", "detector", "any_k"), ("train", "learning_rate", 1.0),
    ("data", "ood", ("kmnist",)), ("data", "name", "mnist"), ("data", "data_dir", "/x"),
    ("data", "perturb_rate", 0.2), ("seed", None, 5)])
def test_an_unrelated_key_leaves_the_digest_alone(model, section, key, value):
  before = model.digest
  if key is None:
    model.config[section] = value
  else:
    model.config[section][key] = value
  assert model.digest == before


def test_a_new_key_leaves_the_digest_alone(model):
  before = model.digest
  model.config.train.new_knob = 3  # a key that did not exist when the digest was taken
  assert model.digest == before


@pytest.mark.parametrize("section,key,value", [
    ("model", "skip_inference", "mean"), ("model", "skip_mode", "sample"),
    ("model", "dtype", "bfloat16"), ("data", "eval_binarize_seed", 1)])
def test_a_changed_score_key_changes_the_digest(model, section, key, value):
  before = model.digest
  model.config[section][key] = value
  assert model.digest != before


def test_new_weights_change_the_digest(model):
  before = model.digest
  model.params = jax.tree_util.tree_map(lambda p: p * 1.0001, model.params)
  assert model.digest != before


def test_a_score_key_added_later_at_its_old_value_keeps_the_digest(model, monkeypatch):
  before = model.digest
  model.config.model.new_layer_option = "as_before"
  monkeypatch.setattr(config_lib, "SCORE_KEYS", config_lib.SCORE_KEYS + ("model.new_layer_option",))
  monkeypatch.setattr(config_lib, "SCORE_KEYS_SINCE", {"model.new_layer_option": "as_before"})
  assert model.digest == before
  model.config.model.new_layer_option = "changed"
  assert model.digest != before
