"""A real multi-process run: two processes on 127.0.0.1 (one CPU device each, joined by
`jax.distributed`) train the tiny config, stop, resume from their checkpoint, and score
images; the params and scores equal a one-process run on two devices with the same global
batch."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from hvae_jax import api, checkpoints, train_lib
from tests.helpers import DATA_DIR, MULTIPROCESS_IMAGES, REPO, fmnist_slice, multiprocess_config

WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")
STOP_AT, END_AT = 10, 20  # the first run stops at STOP_AT; the second resumes to END_AT
TIMEOUT_S = 240  # per run of the two processes, on a loaded machine


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(tmp_path, workdir, max_steps: int, scores,
                       max_steps_1=None) -> tuple[list[int], str]:
  """Both workers to `max_steps` (process 1 to `max_steps_1` if given): their exit codes and
  logs. Both are killed if they outlast the timeout."""
  env = {**os.environ, "HVAE_DATA_DIR": DATA_DIR, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}  # one device per process
  port = _free_port()
  steps = [max_steps, max_steps if max_steps_1 is None else max_steps_1]
  logs = [tmp_path / f"worker{i}_{steps[i]}.log" for i in range(2)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w", encoding="utf-8") as out:
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, str(i), "2", str(port), str(workdir), str(steps[i]),
             str(scores)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return codes, "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)


def _train_two_processes(tmp_path, workdir, max_steps: int, scores) -> None:
  codes, logs = _run_two_processes(tmp_path, workdir, max_steps, scores)
  assert codes == [0, 0], logs


@pytest.mark.slow
def test_two_processes_train_resume_and_score_like_one_process_on_two_devices(tmp_path):
  # The reference must really split the batch over two devices (conftest / scripts/test.sh).
  assert jax.device_count() == 2, "need XLA_FLAGS=--xla_force_host_platform_device_count=2"
  workdir, scores = tmp_path / "two_processes", tmp_path / "scores.npz"
  _train_two_processes(tmp_path, workdir, STOP_AT, scores)
  _train_two_processes(tmp_path, workdir, END_AT, scores)  # resumes from step STOP_AT
  with checkpoints.Checkpointer(str(workdir / "checkpoints"), read_only=True) as ckpt:
    assert ckpt.all_steps() == [STOP_AT, END_AT]

  # The same global batch on one process with two devices (conftest), without a stop.
  reference = tmp_path / "one_process"
  train_lib.train_and_evaluate(multiprocess_config(END_AT), str(reference))
  expected = api.load_model(str(reference)).score(fmnist_slice(MULTIPROCESS_IMAGES))

  got_state, _ = checkpoints.load_checkpoint_dir(str(workdir))
  want_state, _ = checkpoints.load_checkpoint_dir(str(reference))
  assert int(got_state["step"]) == END_AT
  leaves = [jax.tree_util.tree_leaves(s["params"]) for s in (got_state, want_state)]
  for got, want in zip(*leaves):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  got = np.load(scores)
  assert sorted(got.files) == sorted(expected)
  for name, want in expected.items():
    assert got[name].shape == (MULTIPROCESS_IMAGES,)
    np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=name)
  # Process 0 alone wrote the metrics: each (step, split) once, not once per process.
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  keys = [(m["step"], m["split"]) for m in lines]
  assert sorted(keys) == sorted(set(keys)) and (END_AT, "train") in keys


def test_processes_with_different_configs_stop_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  codes, logs = _run_two_processes(tmp_path, workdir, 5, tmp_path / "scores.npz", max_steps_1=6)
  assert codes[0] != 0 and codes[1] != 0, logs
  line = "the processes disagree on the config: train.max_steps=6 on process 1 but 5 on process 0"
  assert logs.count(line) == 2, logs  # both processes stop, naming the key
  assert not workdir.exists()
