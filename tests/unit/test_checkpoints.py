"""Tests for hvae_jax.checkpoints: roundtrips, retention, checksums, and every clear-error path."""
from __future__ import annotations

import gc
import hashlib
import logging
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hvae_jax.checkpoints import (MANIFEST, CheckpointError, Checkpointer, CorruptCheckpointError,
                                  TMP_SUFFIX, load_checkpoint_dir, match_params)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _params(seed: int, kernel=(5, 5, 8, 16)) -> dict:
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {
      "stage_0": {
          "conv1": {"kernel": jax.random.normal(k1, kernel), "bias": jnp.zeros(kernel[-1])},
      },
      "stage_1": {"dense": {"kernel": jax.random.normal(k2, (8, 3)),
                            "bias": jnp.full((3,), 0.5)}},
  }


def _state(seed: int, kernel=(5, 5, 8, 16)) -> dict:
  params = _params(seed, kernel)
  return {
      "params": params,
      "opt_state": optax.adam(1e-3).init(params),
      "step": np.int64(0),
      "rng": np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)), np.uint32),
      "data_position": 0,
  }


def _trained_state() -> dict:
  """A state whose every leaf differs from a fresh `_state(0)`."""
  state = _state(1)
  tx = optax.adam(1e-3)
  grads = jax.tree_util.tree_map(jnp.ones_like, state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  state.update(params=optax.apply_updates(state["params"], updates), opt_state=opt_state,
               step=np.int64(17), data_position=1234)
  return state


def _metadata(**extra) -> dict:
  config = ml_collections.ConfigDict({"model": {"name": "hvae", "blocks": ((64, 5, 1),)},
                                      "seed": 0})
  return {"config": config.to_dict(), "model": "hvae", **extra}


def _save(workdir, steps, state=None, max_to_keep=3, **kwargs) -> None:
  state = _trained_state() if state is None else state
  with Checkpointer(str(workdir), max_to_keep=max_to_keep, **kwargs) as ckpt:
    for step in steps:
      assert ckpt.save(step, state, _metadata(step=step))
    ckpt.wait()


def _largest_array_file(step_dir) -> str:
  """The OCDBT data file holding the big conv kernel (array data lives in `.../d/` dirs)."""
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
           for name in names if os.path.basename(root) == "d"]
  largest = max(files, key=os.path.getsize)
  assert os.path.getsize(largest) > 5_000  # the 5x5x8x16 float32 kernel, not an index node
  return largest


def _flip_byte(path) -> None:
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))


def test_roundtrip_into_fresh_state_keeps_values_and_types(tmp_path):
  saved = _trained_state()
  _save(tmp_path, [17], saved)
  fresh = _state(0)
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 17
    restored, metadata = ckpt.restore(target=fresh)

  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(fresh)
  for got, want, like in zip(jax.tree_util.tree_leaves(restored),
                             jax.tree_util.tree_leaves(saved),
                             jax.tree_util.tree_leaves(fresh)):
    assert type(got) is type(like)
    assert np.asarray(got).dtype == np.asarray(like).dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  assert restored["step"] == 17 and restored["data_position"] == 1234
  assert metadata["model"] == "hvae" and metadata["step"] == 17

  # The restored optimiser state continues training exactly like the saved one.
  tx = optax.adam(1e-3)
  grads = jax.tree_util.tree_map(jnp.ones_like, saved["params"])
  want, _ = tx.update(grads, saved["opt_state"], saved["params"])
  got, _ = tx.update(grads, restored["opt_state"], restored["params"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


def test_restore_without_target_gives_numpy_and_with_abstract_target(tmp_path):
  saved = _trained_state()
  _save(tmp_path, [3], saved)
  with Checkpointer(str(tmp_path), read_only=True) as ckpt:
    raw, _ = ckpt.restore()
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x),
                                                                     np.asarray(x).dtype),
                                      _state(0))
    from_abstract, _ = ckpt.restore(3, target=abstract)
  assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(raw))
  np.testing.assert_array_equal(raw["params"]["stage_0"]["conv1"]["kernel"],
                                saved["params"]["stage_0"]["conv1"]["kernel"])
  np.testing.assert_array_equal(raw["opt_state"][0]["mu"]["stage_1"]["dense"]["bias"],
                                saved["opt_state"][0].mu["stage_1"]["dense"]["bias"])
  np.testing.assert_array_equal(raw["rng"], saved["rng"])
  assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(from_abstract))
  np.testing.assert_array_equal(from_abstract["opt_state"][0].nu["stage_0"]["conv1"]["kernel"],
                                saved["opt_state"][0].nu["stage_0"]["conv1"]["kernel"])


def test_keeps_last_n_and_latest_step(tmp_path):
  _save(tmp_path, [1, 2, 3, 4, 5], max_to_keep=2)
  assert sorted(p for p in os.listdir(tmp_path) if p.isdigit()) == ["4", "5"]
  with Checkpointer(str(tmp_path), max_to_keep=2) as ckpt:
    assert ckpt.latest_step() == 5
    assert ckpt.all_steps() == [4, 5]
    assert ckpt.restore(4)[1]["step"] == 4
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 2 .*\[4, 5\]"):
      ckpt.restore(2)


def test_save_skips_old_steps_and_force(tmp_path):
  state = _trained_state()
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.save(0, state, _metadata())
    assert ckpt.save(10, state, _metadata())
    assert not ckpt.save(10, state, _metadata())   # not newer than latest
    assert ckpt.save(13, state, _metadata(), force=True)
    assert not ckpt.save(13, state, _metadata(), force=True)  # exists: skipped, no error
    ckpt.wait()
    assert ckpt.all_steps() == [0, 10, 13]


def test_mismatching_target_names_path_shapes_and_config(tmp_path):
  _save(tmp_path, [7])
  wrong = _state(0, kernel=(3, 3, 8, 16))
  wrong["params"]["stage_1"]["dense"]["kernel"] = jnp.zeros((8, 2))
  wrong["opt_state"] = optax.adam(1e-3).init(wrong["params"])
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CheckpointError) as info:
      ckpt.restore(target=wrong)
  msg = str(info.value)
  assert msg.splitlines()[1].strip() == (
      "params/stage_0/conv1/kernel: checkpoint (5,5,8,16) vs model (3,3,8,16)")
  assert "opt_state/0/mu/stage_0/conv1/kernel" in msg
  assert "(6 mismatching leaves)" in msg  # 2 kernels, each in params, adam's mu and nu
  assert "params/stage_1/dense/kernel: checkpoint (8,3) vs model (8,2)" in msg
  assert "... and 1 more" in msg  # only the first 5 are listed
  assert str(tmp_path / "7") in msg
  assert '"name": "hvae"' in msg and "config=" in msg


def test_mismatching_structure_and_dtype(tmp_path):
  _save(tmp_path, [7])
  target = _state(0)
  target["params"]["stage_1"]["dense"]["bias"] = jnp.zeros((3,), jnp.bfloat16)
  del target["data_position"]
  target["extra"] = np.zeros(2, np.float32)
  with pytest.raises(CheckpointError) as info:
    load_checkpoint_dir(str(tmp_path), target=target)
  msg = str(info.value)
  assert "params/stage_1/dense/bias: checkpoint (3,) float32 vs model (3,) bfloat16" in msg
  assert "extra: missing from checkpoint" in msg
  assert "data_position: in checkpoint () but not in model" in msg


@pytest.mark.parametrize("how", ["missing_dir", "empty_dir", "file"])
def test_no_checkpoint_is_a_clear_error(tmp_path, how):
  path = tmp_path / "workdir"
  if how == "empty_dir":
    path.mkdir()
  elif how == "file":
    path.write_text("not a checkpoint")
  with pytest.raises(CheckpointError, match="workdir"):
    load_checkpoint_dir(str(path))
  if how != "file":
    with pytest.raises(CheckpointError,
                       match=r"no checkpoint found in .*workdir; train first with python "
                             r"train.py --workdir=.*workdir or pass --checkpoint"):
      with Checkpointer(str(path), read_only=True) as ckpt:
        assert ckpt.latest_step() is None
        ckpt.restore()
    assert not (how == "missing_dir" and path.exists())  # read-only never creates it


# When a read fails, orbax leaves sibling tensorstore reads whose callbacks later hit a
# closed asyncio loop ("Event loop is closed"): harmless noise from orbax, not our error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("corruption", ["truncate", "garbage", "no_metadata", "no_structure"])
@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no_manifest"])
def test_corrupt_step_is_a_clear_error(tmp_path, corruption, manifest):
  _save(tmp_path, [4])
  step_dir = tmp_path / "4"
  if not manifest:  # orbax's own reads must still fail clearly, e.g. on older checkpoints
    os.remove(step_dir / MANIFEST)
  if corruption == "truncate":
    data = _largest_array_file(step_dir)
    with open(data, "r+b") as f:
      f.truncate(os.path.getsize(data) // 2)
  elif corruption == "garbage":
    data = _largest_array_file(step_dir)
    with open(data, "wb") as f:
      f.write(np.random.default_rng(0).bytes(os.path.getsize(data)))
  elif corruption == "no_metadata":
    shutil.rmtree(step_dir / "metadata")
  else:
    os.remove(step_dir / "state" / "_METADATA")
  for target in (None, _state(0)):
    with pytest.raises(CheckpointError, match=rf"checkpoint {step_dir} is corrupt"):
      load_checkpoint_dir(str(tmp_path), target=target)
  gc.collect()  # surface orbax's leftover coroutines here, under the filter above


def test_unfinished_tmp_checkpoint_is_ignored_and_cleaned(tmp_path):
  _save(tmp_path, [2])
  # What a kill during the save of step 3 leaves: orbax's tmp dir, partly written.
  tmp_dir = tmp_path / f"3{TMP_SUFFIX}"
  shutil.copytree(tmp_path / "2", tmp_dir)
  shutil.rmtree(tmp_dir / "metadata")
  os.remove(_largest_array_file(tmp_dir))

  with Checkpointer(str(tmp_path), read_only=True) as ckpt:
    assert ckpt.latest_step() == 2
    with pytest.raises(CheckpointError, match="unfinished"):
      ckpt.restore(3)
  state, metadata = load_checkpoint_dir(str(tmp_path))
  assert metadata["step"] == 2
  with pytest.raises(CheckpointError, match="unfinished"):
    load_checkpoint_dir(str(tmp_dir))

  # The resumed trainer sees step 2, removes the leftover, and can save step 3 again.
  with Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 2
    restored, _ = ckpt.restore(target=_state(0))
    assert ckpt.save(3, restored, _metadata(step=3))
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
  assert not tmp_dir.exists()


def test_metadata_roundtrip(tmp_path):
  config = ml_collections.ConfigDict({"model": {"blocks": ((64, 5, 1), (64, 3, 2))},
                                      "lr": 3e-4, "name": "fmnist"})
  metadata = {"config": config, "model": "hvae", "n": np.int32(3), "flag": True,
              "shapes": {"params/w": [3, 3, 1, 64]}, "none": None}
  with Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, {"w": np.ones(3, np.float32)}, metadata)
    ckpt.wait()
    _, got = ckpt.restore()
  assert got == {"config": {"model": {"blocks": [[64, 5, 1], [64, 3, 2]]}, "lr": 3e-4,
                            "name": "fmnist"},
                 "model": "hvae", "n": 3, "flag": True,
                 "shapes": {"params/w": [3, 3, 1, 64]}, "none": None}
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(TypeError, match="JSON"):
      ckpt.save(2, {"w": np.ones(3)}, {"bad": object()})


def test_load_checkpoint_dir_workdir_and_step_dir(tmp_path):
  with Checkpointer(str(tmp_path)) as ckpt:
    for step in (10, 20):
      state = _trained_state()
      state["step"] = np.int64(step)
      ckpt.save(step, state, _metadata(step=step))
    ckpt.wait()
  state, metadata = load_checkpoint_dir(str(tmp_path))
  assert metadata["step"] == 20 and int(state["step"]) == 20
  state, metadata = load_checkpoint_dir(str(tmp_path / "10"))
  assert metadata["step"] == 10 and int(state["step"]) == 10
  state, _ = load_checkpoint_dir(str(tmp_path / "10"), target=_state(0))
  assert isinstance(state["step"], np.int64) and state["step"] == 10
  with pytest.raises(CheckpointError, match="no checkpoint found"):
    load_checkpoint_dir(str(tmp_path / "10" / "state" / "d"))


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices (scripts/test.sh sets "
                    "--xla_force_host_platform_device_count=2)")
def test_sharded_target_restores_with_its_sharding(tmp_path):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {"w": jax.device_put(jnp.arange(8.0), sharded),
           "b": jax.device_put(jnp.ones(3), replicated)}
  _save(tmp_path, [1], state)
  target = {"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sharded),
            "b": jax.device_put(jnp.zeros(3), replicated)}
  restored, _ = load_checkpoint_dir(str(tmp_path), target=target)
  assert restored["w"].sharding == sharded and restored["b"].sharding == replicated
  np.testing.assert_array_equal(restored["w"], np.arange(8.0))
  np.testing.assert_array_equal(restored["b"], np.ones(3))


def test_load_checkpoint_dir_finds_training_checkpoints_subdir(tmp_path):
  _save(tmp_path / "checkpoints", [5, 9])
  _, metadata = load_checkpoint_dir(str(tmp_path))
  assert metadata["step"] == 9
  empty = tmp_path / "empty_workdir"
  (empty / "checkpoints").mkdir(parents=True)
  with pytest.raises(CheckpointError, match=rf"no checkpoint found in {empty};"):
    load_checkpoint_dir(str(empty))


def test_match_params_arranges_raw_params_and_reports_mismatch(tmp_path):
  saved = _trained_state()
  _save(tmp_path, [1], saved)
  raw, metadata = load_checkpoint_dir(str(tmp_path))
  abstract = flax.core.freeze(jax.eval_shape(lambda: _params(0)))
  params = match_params(raw["params"], abstract, str(tmp_path), metadata)
  assert isinstance(params, flax.core.FrozenDict)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(abstract)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                         flax.core.freeze(saved["params"]))
  wrong = jax.eval_shape(lambda: _params(0, kernel=(3, 3, 8, 16)))
  with pytest.raises(CheckpointError) as info:
    match_params(raw["params"], wrong, str(tmp_path), metadata)
  assert ("params/stage_0/conv1/kernel: checkpoint (5,5,8,16) vs model (3,3,8,16)"
          in str(info.value))
  assert "config=" in str(info.value)


def test_manifest_lists_every_file_in_sha256sum_format(tmp_path):
  _save(tmp_path, [6])
  step_dir = tmp_path / "6"
  lines = (step_dir / MANIFEST).read_text().splitlines()
  listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
  on_disk = {os.path.relpath(os.path.join(root, name), step_dir).replace(os.sep, "/")
             for root, _, names in os.walk(step_dir) for name in names} - {MANIFEST}
  assert set(listed) == on_disk and "state/_METADATA" in listed
  for name, digest in listed.items():
    with open(step_dir / name, "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == digest, name
  with Checkpointer(str(tmp_path), read_only=True) as ckpt:
    assert ckpt.verify(6)


def test_flipped_byte_is_caught_naming_the_file_and_step(tmp_path):
  saved = _trained_state()
  _save(tmp_path, [3], saved)
  data = _largest_array_file(tmp_path / "3")
  _flip_byte(data)
  name = os.path.relpath(data, tmp_path / "3").replace(os.sep, "/")
  for target in (None, _state(0)):
    with pytest.raises(CorruptCheckpointError, match=rf"file {name} does not match the sha256 "
                       rf"recorded in its {MANIFEST} when step 3 was saved") as info:
      load_checkpoint_dir(str(tmp_path), target=target)
    assert info.value.step == 3
  # What the manifest guards against: orbax alone loads the flipped byte without a word.
  os.remove(tmp_path / "3" / MANIFEST)
  raw, _ = load_checkpoint_dir(str(tmp_path))
  assert not np.array_equal(raw["params"]["stage_0"]["conv1"]["kernel"],
                            saved["params"]["stage_0"]["conv1"]["kernel"])


def test_step_without_manifest_loads_with_a_note(tmp_path, caplog):
  saved = _trained_state()
  _save(tmp_path, [2], saved)
  os.remove(tmp_path / "2" / MANIFEST)
  with caplog.at_level(logging.WARNING, logger="hvae_jax.checkpoints"):
    raw, _ = load_checkpoint_dir(str(tmp_path))
  np.testing.assert_array_equal(raw["rng"], saved["rng"])
  notes = [r.getMessage() for r in caplog.records if MANIFEST in r.getMessage()]
  assert len(notes) == 1 and "unverified" in notes[0] and "\n" not in notes[0]
  # The shipped checkpoint predates manifests (its folder has a SHA256SUMS of its own).
  state, metadata = load_checkpoint_dir(os.path.join(REPO, "pretrained", "fmnist_hvae_small"))
  assert "params" in state and "config" in metadata


def test_resume_falls_back_past_corrupt_steps_and_moves_them_aside(tmp_path):
  state = _trained_state()
  _save(tmp_path, [1, 2, 3], state)
  _flip_byte(_largest_array_file(tmp_path / "3"))
  os.remove(tmp_path / "2" / "metadata" / "metadata")
  reports = []
  with Checkpointer(str(tmp_path)) as ckpt:
    _, metadata = ckpt.restore_newest_valid(target=_state(0), report=reports.append)
    assert metadata["step"] == 1 and ckpt.all_steps() == [1]
    assert ckpt.save(2, state, _metadata(step=2))  # not refused as older than the bad step 3
    ckpt.wait()
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "2.corrupt", "3.corrupt"]
  assert len(reports) == 2 and all("resumed from step 1" in r for r in reports)
  assert "checkpoint step 3" in reports[0] and "state/" in reports[0]
  assert f"moved it to {tmp_path / '2.corrupt'}" in reports[1]


def test_resume_with_every_step_corrupt_is_an_error_and_moves_nothing(tmp_path):
  _save(tmp_path, [1, 2])
  for step in ("1", "2"):
    _flip_byte(_largest_array_file(tmp_path / step))
  with Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(CorruptCheckpointError, match=r"no intact checkpoint in .*step 2: file "
                       r"state/.*step 1: file state/.*Nothing was moved or deleted"):
      ckpt.restore_newest_valid(target=_state(0))
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]
  with Checkpointer(str(tmp_path / "empty")) as ckpt:
    with pytest.raises(CheckpointError, match="no checkpoint found"):
      ckpt.restore_newest_valid()
