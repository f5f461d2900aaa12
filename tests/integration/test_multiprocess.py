"""Real multi-process runs: two processes on 127.0.0.1 (one CPU device each, joined by
`jax.distributed`) train the tiny config, stop (at a step, on SIGTERM, or when a peer is
SIGKILLed), resume from their checkpoint, and score images, and evaluate.py scores a
checkpoint; params and scores equal a one-process run on two devices with the same global
batch."""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator

import jax
import numpy as np
import pytest

from hvae_jax import api, checkpoints, training
from tests.helpers import DATA_DIR, MULTIPROCESS_IMAGES, REPO, fmnist_slice, multiprocess_config

WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")
STOP_AT, END_AT = 10, 40  # runs stop at STOP_AT (or on a signal), then resume to END_AT
SIGNAL_AFTER = 10  # a signal goes once process 0 logged this step: mid-run, all compiled
LONG_RUN = 400  # max_steps of a run stopped by a signal long before its end
TIMEOUT_S = 240  # per run of the two processes, on a loaded machine

Argv = Callable[[int, int], list]  # (process id, coordinator port) -> the command line


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return {**os.environ, "HVAE_DATA_DIR": DATA_DIR, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


@contextlib.contextmanager
def _two_processes(tmp_path, name: str, argv: Argv) -> Iterator[tuple[list, list]]:
  """Starts `argv(i, port)` as processes 0 and 1 (one device each); yields them and their
  log files; kills whichever is still running when the block ends."""
  port = _free_port()
  logs = [tmp_path / f"{name}{i}.log" for i in range(2)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w", encoding="utf-8") as out:
        procs.append(subprocess.Popen(argv(i, port), cwd=REPO, env=_env(1), stdout=out,
                                      stderr=subprocess.STDOUT))
    yield procs, logs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def _wait(procs, logs) -> tuple[list[int], list[str]]:
  """The processes' exit codes and logs (TimeoutExpired past TIMEOUT_S)."""
  codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  return codes, [log.read_text(errors="replace") for log in logs]


def _tails(texts: list[str]) -> str:
  return "\n".join(f"--- process {i}\n{t[-3000:]}" for i, t in enumerate(texts))


def _worker(workdir, steps: list[int], scores) -> Argv:
  return lambda i, port: [sys.executable, WORKER, str(i), "2", str(port), str(workdir),
                          str(steps[i]), str(scores)]


def _run_two_processes(tmp_path, workdir, max_steps: int, scores,
                       max_steps_1=None) -> tuple[list[int], list[str]]:
  """Both workers to `max_steps` (process 1 to `max_steps_1` if given)."""
  steps = [max_steps, max_steps if max_steps_1 is None else max_steps_1]
  with _two_processes(tmp_path, f"train{steps[1]}_", _worker(workdir, steps, scores)) as run:
    return _wait(*run)


def _train_two_processes(tmp_path, workdir, max_steps: int, scores) -> list[str]:
  codes, texts = _run_two_processes(tmp_path, workdir, max_steps, scores)
  assert codes == [0, 0], _tails(texts)
  return texts


def _logged_step(workdir) -> int:
  """The last training step process 0 logged to metrics.jsonl (0 before any)."""
  path = workdir / "metrics.jsonl"
  steps = [0]
  for line in path.read_text().splitlines() if path.exists() else []:
    with contextlib.suppress(ValueError):  # a line still being written
      steps.append(json.loads(line)["step"])
  return max(steps)


def _signal_mid_run(tmp_path, workdir, signum: int,
                    targets: tuple[int, ...]) -> tuple[list[int], list[str]]:
  """Both workers train towards LONG_RUN; once process 0 logged SIGNAL_AFTER, `signum` goes
  to each process in `targets`, half a second apart (as a scheduler's signals do)."""
  argv = _worker(workdir, [LONG_RUN] * 2, tmp_path / "unused.npz")
  with _two_processes(tmp_path, f"signal{signum}_", argv) as (procs, logs):
    deadline = time.time() + TIMEOUT_S
    while _logged_step(workdir) < SIGNAL_AFTER:
      assert time.time() < deadline and all(p.poll() is None for p in procs), \
          _tails([log.read_text(errors="replace") for log in logs])
      time.sleep(0.2)
    for i in targets:
      procs[i].send_signal(signum)
      time.sleep(0.5)
    return _wait(procs, logs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The same global batch on one process with two devices (conftest), to END_AT unstopped:
  its workdir and its scores of the test images."""
  # The reference must really split the batch over two devices (conftest / scripts/test.sh).
  assert jax.device_count() == 2, "need XLA_FLAGS=--xla_force_host_platform_device_count=2"
  workdir = tmp_path_factory.mktemp("one_process")
  training.train_and_evaluate(multiprocess_config(END_AT), str(workdir))
  return workdir, api.load_model(str(workdir)).score(fmnist_slice(MULTIPROCESS_IMAGES))


def _assert_params_equal(workdir, reference_workdir) -> None:
  got_state, _ = checkpoints.load_checkpoint_dir(str(workdir))
  want_state, _ = checkpoints.load_checkpoint_dir(str(reference_workdir))
  assert int(got_state["step"]) == int(want_state["step"]) == END_AT
  leaves = [jax.tree_util.tree_leaves(s["params"]) for s in (got_state, want_state)]
  for got, want in zip(*leaves):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_train_resume_and_score_like_one_process_on_two_devices(tmp_path,
                                                                               reference):
  workdir, scores = tmp_path / "two_processes", tmp_path / "scores.npz"
  _train_two_processes(tmp_path, workdir, STOP_AT, scores)
  texts = _train_two_processes(tmp_path, workdir, END_AT, scores)
  assert all(f"Resumed from step {STOP_AT} in " in t for t in texts), _tails(texts)
  with checkpoints.Checkpointer(str(workdir / "checkpoints"), read_only=True) as ckpt:
    assert ckpt.all_steps() == [20, 30, END_AT]  # keep_checkpoints=3
  reference_workdir, expected = reference
  _assert_params_equal(workdir, reference_workdir)
  got = np.load(scores)
  assert sorted(got.files) == sorted(expected)
  for name, want in expected.items():
    assert got[name].shape == (MULTIPROCESS_IMAGES,)
    np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4, err_msg=name)
  # Process 0 alone wrote the metrics: each (step, split) once, not once per process.
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  keys = [(m["step"], m["split"]) for m in lines]
  assert sorted(keys) == sorted(set(keys)) and (END_AT, "train") in keys


@pytest.mark.slow
@pytest.mark.parametrize("targets", [(1,), (1, 0)], ids=["to_one_process", "to_both"])
def test_sigterm_stops_every_process_at_one_step_and_the_run_resumes_exactly(tmp_path, reference,
                                                                              targets):
  # A signal to one process only is the case that would deadlock without an agreed step:
  # the other would wait in the next step's collectives for it.
  workdir = tmp_path / "run"
  codes, texts = _signal_mid_run(tmp_path, workdir, signal.SIGTERM, targets)
  assert codes == [130, 130], _tails(texts)
  saved = [re.findall(r"Interrupted: saved step (\d+) in ", t) for t in texts]
  assert len(saved[0]) == 1 and saved[0] == saved[1], _tails(texts)  # the same step, once
  step = int(saved[0][0])
  assert SIGNAL_AFTER <= step < END_AT, _tails(texts)
  with checkpoints.Checkpointer(str(workdir / "checkpoints"), read_only=True) as ckpt:
    assert ckpt.latest_step() == step
  texts = _train_two_processes(tmp_path, workdir, END_AT, tmp_path / "scores.npz")
  assert all(f"Resumed from step {step} in " in t for t in texts), _tails(texts)
  _assert_params_equal(workdir, reference[0])


@pytest.mark.slow
def test_a_killed_process_aborts_the_other_and_the_run_resumes_exactly(tmp_path, reference):
  # SIGKILL leaves no chance to save: the survivor must not hang in a collective or a save
  # barrier; JAX's coordinator aborts it once the heartbeats stop (20 s in the worker).
  workdir = tmp_path / "run"
  codes, texts = _signal_mid_run(tmp_path, workdir, signal.SIGKILL, (1,))
  assert codes[1] == -signal.SIGKILL and codes[0] not in (0, 130), _tails(texts)
  assert "Terminating process because the JAX distributed service" in texts[0], _tails(texts)
  _train_two_processes(tmp_path, workdir, END_AT, tmp_path / "scores.npz")  # newest intact step
  _assert_params_equal(workdir, reference[0])


def _evaluate(output, *extra: str) -> list:
  return [sys.executable, os.path.join(REPO, "evaluate.py"), "--ood=mnist", "--max_examples=64",
          "--iw_samples=2", f"--data_dir={DATA_DIR}", f"--output={output}", *extra]


def test_evaluate_distributed_scores_like_one_process_and_only_process_0_writes(tmp_path,
                                                                               tiny_workdir):
  outputs = [tmp_path / "process0", tmp_path / "process1"]  # process 1 is told its own folder
  def argv(i: int, port: int) -> list:
    return _evaluate(outputs[i], f"--checkpoint={tiny_workdir}", "--distributed",
                     "--num_processes=2", f"--coordinator_address=127.0.0.1:{port}",
                     f"--process_id={i}")

  with _two_processes(tmp_path, "evaluate", argv) as run:
    codes, texts = _wait(*run)
  assert codes == [0, 0], _tails(texts)
  assert not outputs[1].exists()  # process 1 wrote nothing: no results, plots nor caches
  # Again: process 0's folder holds every set's scores, process 1's (its own disk) none.
  # Both must take process 0's caches; a process that scored alone would wait forever in
  # the scoring's collectives for one that skipped them.
  first = {f: np.load(outputs[0] / f)["elbo"] for f in os.listdir(outputs[0])
           if f.startswith("scores_")}
  with _two_processes(tmp_path, "evaluate_again", argv) as run:
    codes, texts = _wait(*run)
  assert codes == [0, 0], _tails(texts)
  assert [t.count(f"from the cache in {w}") for t, w in zip(texts, (outputs[0],
          "process 0's cache folder"))] == [3, 3], _tails(texts)
  for f, elbo in first.items():
    np.testing.assert_array_equal(np.load(outputs[0] / f)["elbo"], elbo)
  assert not outputs[1].exists()
  one = tmp_path / "one_process"
  r = subprocess.run(_evaluate(one, f"--checkpoint={tiny_workdir}"), cwd=REPO, env=_env(2),
                     capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(outputs[0])) == sorted(os.listdir(one))
  score_files = [f for f in os.listdir(one) if f.startswith("scores_")]
  assert len(score_files) == 3  # fashion_mnist test and train, mnist test
  for f in score_files:
    got, want = np.load(outputs[0] / f), np.load(one / f)
    assert str(got["_key"]) == str(want["_key"])  # the same model, images and settings
    names = sorted(set(want.files) - {"_seconds", "_key"})
    assert sorted(set(got.files) - {"_seconds", "_key"}) == names
    for name in names:
      np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=f"{f}:{name}")


def test_processes_with_different_configs_stop_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  codes, texts = _run_two_processes(tmp_path, workdir, 5, tmp_path / "scores.npz", max_steps_1=6)
  assert codes[0] != 0 and codes[1] != 0, _tails(texts)
  line = "the processes disagree on the config: train.max_steps=6 on process 1 but 5 on process 0"
  assert all(t.count(line) == 1 for t in texts), _tails(texts)  # both stop, naming the key
  assert not workdir.exists()
