"""Training: loss goes down, data-parallel step equals single-device, kill/resume, NaN guard,
Ctrl-C, no host sync per step."""
import json
import os
import re
import shutil
import signal
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as jax_array
from jax.sharding import NamedSharding, PartitionSpec as P

from hvae_jax import checkpoints, layers, preprocess, sharding, training
from hvae_jax.models import build_model
from hvae_jax.training import loop, state as training_state
from tests.helpers import fmnist_slice, tiny_config


def _leaves_close(a, b, **kw):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_two_device_step_equals_one_device_step():
  assert len(jax.devices()) >= 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
  config = tiny_config()
  model = build_model(config, (28, 28, 1))
  step = training.make_train_step(model, config, steps_per_epoch=100, kind="binary")
  batch = fmnist_slice(32)
  key = jax.random.key(0)
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:2]):
    mesh = sharding.make_data_mesh(devices)
    x_init = preprocess.eval_binarize(batch, 0)
    state = jax.device_put(training.init_state(model, config, x_init), NamedSharding(mesh, P()))
    fn = training.make_data_parallel(step, mesh)
    for _ in range(3):
      state, metrics = fn(state, sharding.global_batch(batch, mesh), key)
    results.append((state, metrics))
  _leaves_close(results[0][0].params, results[1][0].params, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(results[0][1]["loss"], results[1][1]["loss"], rtol=1e-5)


def _read_metrics(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_training_lowers_loss_and_writes_outputs(tmp_path):
  config = tiny_config()
  config.train.max_steps = 60
  training.train_and_evaluate(config, str(tmp_path))
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
  full = training.train_and_evaluate(config, str(tmp_path / "full"))
  # "Kill" after step 20: train to 20 in a fresh workdir, then rerun the 40-step command.
  config.train.max_steps = 20
  training.train_and_evaluate(config, str(tmp_path / "resumed"))
  config.train.max_steps = 40
  resumed = training.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert int(resumed.step) == 40
  _leaves_close(full.params, resumed.params, rtol=1e-5, atol=1e-6)


def _tensorboard_events(path):
  """The events of one TensorBoard event file (TFRecord framing: length, CRC, data, CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  raw, i, events = open(path, "rb").read(), 0, []
  while i < len(raw):
    n = struct.unpack("<Q", raw[i:i + 8])[0]
    events.append(event_pb2.Event.FromString(raw[i + 12:i + 12 + n]))
    i += 12 + n + 4
  return events


def test_resume_after_sigkill_keeps_one_metrics_row_per_step(tmp_path):
  """A SIGKILL after step 40's rows were written but before its checkpoint reached disk (as
  here: step 40 removed, a row cut off mid-write): the resumed run replays steps 21..40 and
  their rows replace the old ones; TensorBoard is told to hide the old events from step 21."""
  config = tiny_config(train__sample_grid=0, train__max_steps=40,
                       train__checkpoint_every_steps=20, train__eval_every_epochs=0.01)
  training.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    uninterrupted = [(r["step"], r["split"]) for r in map(json.loads, f)]
  assert max(s for s, _ in uninterrupted) == 40 and len(set(uninterrupted)) == len(uninterrupted)
  shutil.rmtree(tmp_path / "checkpoints" / "40")
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 4')  # the kill's cut-off line
  training.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [(r["step"], r["split"]) for r in rows] == uninterrupted
  runs = sorted(os.listdir(tmp_path / "tensorboard"))
  assert len(runs) == 2
  starts = [e.step for e in _tensorboard_events(tmp_path / "tensorboard" / runs[1])
            if e.HasField("session_log")]
  assert starts == [21]  # TensorBoard's purge marker: older events from step 21 on are hidden


def _quick_config(**overrides):
  """tiny_config without samples and with logging, evaluation and saving only at the end."""
  config = tiny_config(train__sample_grid=0, train__log_every_steps=1000,
                       train__eval_every_epochs=100.0, train__checkpoint_every_steps=1000)
  for key, value in overrides.items():
    config.train[key] = value
  return config


def _saved_steps(workdir):
  with checkpoints.Checkpointer(str(workdir / "checkpoints"), read_only=True) as ckpt:
    return ckpt.all_steps()


def test_nan_loss_stops_with_clear_message_and_keeps_good_checkpoint(tmp_path):
  # Checked only where the loop syncs anyway: here the saves every 2 steps, as logging is rare.
  config = _quick_config(max_steps=30, checkpoint_every_steps=2,
                         learning_rate=1e30)  # diverges within a few steps
  with pytest.raises(training.TrainingError,
                     match=r"non-finite loss or gradient at step \d+") as info:
    training.train_and_evaluate(config, str(tmp_path))
  first_bad = int(re.search(r"at step (\d+)", str(info.value)).group(1))
  # No checkpoint holds a step taken after the first non-finite one.
  assert all(step <= first_bad for step in _saved_steps(tmp_path)), (first_bad, str(info.value))


def test_nan_policy_skip_keeps_training(tmp_path):
  config = tiny_config(train__nan_policy="skip", train__learning_rate=1e30)
  config.train.max_steps = 12
  state = training.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 12
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree_util.tree_leaves(state.params))


def test_perturb_rate_feeds_the_step_fresh_noise_instead_of_the_data(tmp_path):
  # Ren et al.'s background model: with mu = 1 every input pixel is noise, so an all-black
  # and an all-white batch give the same loss; with mu = 0 they differ.
  losses = {}
  for rate in (0.0, 1.0):
    config = tiny_config(data__perturb_rate=rate)
    model = build_model(config, (28, 28, 1))
    step = jax.jit(training.make_train_step(model, config, steps_per_epoch=100, kind="binary"))
    state = training.init_state(model, config, preprocess.eval_binarize(fmnist_slice(8), 0))
    losses[rate] = [float(step(state, np.full((8, 28, 28, 1), v, np.uint8),
                               jax.random.key(0))[1]["loss"]) for v in (0, 255)]
  assert losses[0.0][0] != pytest.approx(losses[0.0][1], rel=1e-3)
  assert losses[1.0][0] == pytest.approx(losses[1.0][1], rel=1e-6)
  with pytest.raises(ValueError, match="perturb_rate"):
    training.train_and_evaluate(tiny_config(data__perturb_rate=1.5), str(tmp_path))


def test_bad_config_value_is_reported_by_name(tmp_path):
  config = tiny_config(model__likelihood="gaussian")
  with pytest.raises(ValueError, match="model.likelihood"):
    training.train_and_evaluate(config, str(tmp_path))


def test_batch_not_divisible_by_devices(tmp_path):
  config = tiny_config(train__batch_size=33)
  with pytest.raises(ValueError, match="divisible"):
    training.train_and_evaluate(config, str(tmp_path))


def test_init_uses_separate_keys_for_params_and_sampling(monkeypatch):
  seen = []

  def spy(model, key, x, sample_key):  # stands in for the init: records the keys it was given
    seen.append((jax.random.key_data(key), jax.random.key_data(sample_key)))
    return {"w": jnp.zeros(2)}

  monkeypatch.setattr(layers, "init_params", spy)
  x = np.zeros((2, 28, 28, 1), np.float32)
  for _ in range(2):
    training.init_state(None, tiny_config(), x)
  (k_params, k_sample), again = seen
  assert not np.array_equal(k_params, k_sample)
  jax.tree_util.tree_map(np.testing.assert_array_equal, seen[0], again)  # same seed, same keys


def test_resume_skips_the_init_and_falls_back_past_a_corrupt_step(tmp_path, monkeypatch, capsys):
  config = _quick_config(max_steps=6, checkpoint_every_steps=3)
  full = training.train_and_evaluate(config, str(tmp_path))
  ran_init = []
  real_init = training_state.init_state

  def spy(model, c, x_init):
    ran_init.append(x_init)
    return real_init(model, c, x_init)

  monkeypatch.setattr(training_state, "init_state", spy)
  resumed = training.train_and_evaluate(config, str(tmp_path))  # at max_steps: restore only
  assert not ran_init  # only the shapes are built (`state_shapes`), never the init
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.params, full.params)

  ckpt_dir = tmp_path / "checkpoints"
  data_files = [os.path.join(root, name) for root, _, names in os.walk(ckpt_dir / "6" / "state")
                for name in names if os.path.basename(root) == "d"]
  with open(max(data_files, key=os.path.getsize), "r+b") as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0x01]))
  capsys.readouterr()
  again = training.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "checkpoint step 6" in out and "resumed from step 3" in out and "6.corrupt" in out
  assert sorted(p for p in os.listdir(ckpt_dir) if p[0].isdigit()) == ["3", "6", "6.corrupt"]
  assert int(again.step) == 6
  _leaves_close(again.params, full.params, rtol=1e-5, atol=1e-6)


def test_init_from_continues_from_saved_params_and_step_with_a_fresh_optimizer(tmp_path, capsys):
  """train.init_from: a run whose optimizer state is gone (a shipped model) goes on training."""
  first = training.train_and_evaluate(_quick_config(max_steps=4), str(tmp_path / "a"))
  config = _quick_config(max_steps=4, init_from=str(tmp_path / "a"))
  start = training.train_and_evaluate(config, str(tmp_path / "b"))
  assert int(start.step) == 4
  jax.tree_util.tree_map(np.testing.assert_array_equal, start.params, first.params)
  assert all(not np.any(np.asarray(v)) for v in jax.tree_util.tree_leaves(start.opt_state))
  config.train.max_steps = 6
  more = training.train_and_evaluate(config, str(tmp_path / "b"))
  assert int(more.step) == 6 and _saved_steps(tmp_path / "b")[-1] == 6
  capsys.readouterr()
  again = training.train_and_evaluate(config, str(tmp_path / "b"))  # b's checkpoint wins now
  assert "Resumed from step 6" in capsys.readouterr().out
  jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, more.params)
  assert not np.allclose(jax.tree_util.tree_leaves(more.params)[0],
                         jax.tree_util.tree_leaves(first.params)[0])
  other = _quick_config(max_steps=4, init_from=str(tmp_path / "a"))
  other.model.latents = (("conv", 3), ("dense", 4), ("dense", 2))
  with pytest.raises(ValueError, match=r"(?s)train.init_from=.*params/"):
    training.train_and_evaluate(other, str(tmp_path / "c"))


def _wrap_step(monkeypatch, after_call):
  """Makes the loop's train step call `after_call(index, result)` after each real step."""
  real = loop.compile_train_step
  calls = []

  def make(*args):
    fn = real(*args)

    def step(*args):
      out = fn(*args)
      after_call(len(calls), out)
      calls.append(None)
      return out
    return step

  monkeypatch.setattr(loop, "compile_train_step", make)
  return calls


def test_no_host_sync_between_steps(tmp_path, monkeypatch):
  # Every device -> host read (bool(), float(), np.asarray, device_get) goes through _value.
  reads = [0]
  value = jax_array.ArrayImpl._value

  def counted(self):
    reads[0] += 1
    return value.fget(self)

  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(counted))
  reads_at_step = []
  _wrap_step(monkeypatch, lambda i, out: reads_at_step.append(reads[0]))
  config = _quick_config(max_steps=6)
  state = training.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6 and len(reads_at_step) == 6
  assert reads_at_step[-1] == reads_at_step[0], reads_at_step  # nothing read between steps


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_right_after_a_step_saves_that_step(tmp_path, monkeypatch, capsys,
                                                              signum):
  # The worst moment: the step has consumed (donated) the old state and returned the new one,
  # which the loop has not stored yet. SIGTERM is what schedulers send before a kill.
  results = {}

  def interrupt(i, out):
    if i == 2:
      results["params"] = jax.device_get(out[0].params)
      os.kill(os.getpid(), signum)

  _wrap_step(monkeypatch, interrupt)
  # As in a terminal (a shell script's background job would have SIGINT ignored).
  outer = signal.signal(signal.SIGINT, signal.default_int_handler)
  outer_term = signal.getsignal(signal.SIGTERM)
  try:
    with pytest.raises(KeyboardInterrupt):
      training.train_and_evaluate(_quick_config(max_steps=20), str(tmp_path))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) is outer_term
  finally:
    signal.signal(signal.SIGINT, outer)
  assert "Interrupted: saved step 3" in capsys.readouterr().out
  state, _ = checkpoints.load_checkpoint_dir(str(tmp_path))
  assert int(state["step"]) == 3
  jax.tree_util.tree_map(np.testing.assert_array_equal, state["params"],
                         jax.tree_util.tree_map(np.asarray, results["params"]))


def test_bad_activation_and_skip_inference_are_reported_by_name(tmp_path):
  for key, value in (("model__latent_activation", "tanh"), ("model__skip_inference", "mode")):
    with pytest.raises(ValueError, match=key.replace("__", ".")):
      training.train_and_evaluate(tiny_config(**{key: value}), str(tmp_path))
