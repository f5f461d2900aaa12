"""Training: loss goes down, data-parallel step equals single-device, kill/resume, NaN guard."""
import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from hvae_jax import checkpoints, data, train_lib
from hvae_jax.models import build_model
from tests.helpers import fmnist_slice, tiny_config


def _leaves_close(a, b, **kw):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_two_device_step_equals_one_device_step():
  assert len(jax.devices()) >= 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
  config = tiny_config()
  model = build_model(config, (28, 28, 1))
  step = train_lib.make_train_step(model, config, steps_per_epoch=100, kind="binary")
  batch = fmnist_slice(32)
  key = jax.random.key(0)
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = data.make_data_mesh(devices)
    x_init = data.eval_binarize(batch, 0)
    state = jax.device_put(train_lib.init_state(model, config, x_init), NamedSharding(mesh, P()))
    fn = train_lib.make_data_parallel(step, mesh)
    for _ in range(3):
      state, metrics = fn(state, data.shard_to_mesh(batch, mesh), key)
    results.append((state, metrics))
  _leaves_close(results[0][0].params, results[1][0].params, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(results[0][1]["loss"], results[1][1]["loss"], rtol=1e-5)


def _read_metrics(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_training_lowers_loss_and_writes_outputs(tmp_path):
  config = tiny_config()
  config.train.max_steps = 60
  train_lib.train_and_evaluate(config, str(tmp_path))
  train = _read_metrics(tmp_path, "train")
  assert train[-1]["elbo"] > train[0]["elbo"] + 20, (train[0]["elbo"], train[-1]["elbo"])
  test = _read_metrics(tmp_path, "test")
  assert test[-1]["bpd"] < test[0]["bpd"], [t["bpd"] for t in test]
  assert os.listdir(tmp_path / "samples") and os.listdir(tmp_path / "tensorboard")
  assert checkpoints.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 60


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
  config = tiny_config()
  config.train.max_steps = 40
  config.train.checkpoint_every_steps = 20
  full = train_lib.train_and_evaluate(config, str(tmp_path / "full"))
  # "Kill" after step 20: train to 20 in a fresh workdir, then rerun the 40-step command.
  config.train.max_steps = 20
  train_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.train.max_steps = 40
  resumed = train_lib.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert int(resumed.step) == 40
  _leaves_close(full.params, resumed.params, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_with_clear_message_and_keeps_good_checkpoint(tmp_path):
  config = tiny_config()
  config.train.max_steps = 30
  config.train.checkpoint_every_steps = 10
  config.train.learning_rate = 1e30  # diverges within a few steps
  with pytest.raises(train_lib.TrainingError, match=r"non-finite loss or gradient at step \d+"):
    train_lib.train_and_evaluate(config, str(tmp_path))


def test_nan_policy_skip_keeps_training(tmp_path):
  config = tiny_config(train__nan_policy="skip", train__learning_rate=1e30)
  config.train.max_steps = 12
  state = train_lib.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 12
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree_util.tree_leaves(state.params))


def test_perturb_rate_feeds_the_step_fresh_noise_instead_of_the_data(tmp_path):
  # Ren et al.'s background model: with mu = 1 every input pixel is noise, so an all-black
  # and an all-white batch give the same loss; with mu = 0 they differ.
  losses = {}
  for rate in (0.0, 1.0):
    config = tiny_config(data__perturb_rate=rate)
    model = build_model(config, (28, 28, 1))
    step = jax.jit(train_lib.make_train_step(model, config, steps_per_epoch=100, kind="binary"))
    state = train_lib.init_state(model, config, data.eval_binarize(fmnist_slice(8), 0))
    losses[rate] = [float(step(state, np.full((8, 28, 28, 1), v, np.uint8),
                               jax.random.key(0))[1]["loss"]) for v in (0, 255)]
  assert losses[0.0][0] != pytest.approx(losses[0.0][1], rel=1e-3)
  assert losses[1.0][0] == pytest.approx(losses[1.0][1], rel=1e-6)
  with pytest.raises(ValueError, match="perturb_rate"):
    train_lib.train_and_evaluate(tiny_config(data__perturb_rate=1.5), str(tmp_path))


def test_bad_config_value_is_reported_by_name(tmp_path):
  config = tiny_config(model__likelihood="gaussian")
  with pytest.raises(ValueError, match="model.likelihood"):
    train_lib.train_and_evaluate(config, str(tmp_path))


def test_batch_not_divisible_by_devices(tmp_path):
  config = tiny_config(train__batch_size=33)
  with pytest.raises(ValueError, match="divisible"):
    train_lib.train_and_evaluate(config, str(tmp_path))


def test_bad_activation_and_skip_inference_are_reported_by_name(tmp_path):
  for key, value in (("model__latent_activation", "tanh"), ("model__skip_inference", "mode")):
    with pytest.raises(ValueError, match=key.replace("__", ".")):
      train_lib.train_and_evaluate(tiny_config(**{key: value}), str(tmp_path))
