"""train.py on bad input: one `error:` line naming the flag or key and value, a non-zero exit,
no traceback (unless --verbose), and nothing trained."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from hvae_jax.checkpoints import Checkpointer
from tests.helpers import DATA_DIR, REPO


def _run(*args, env=None):
  env = {**os.environ, "HVAE_DATA_DIR": DATA_DIR, **(env or {})}
  return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


def _corrupt_checkpoint(workdir):
  """A workdir whose only checkpoint has a flipped byte in its array data."""
  with Checkpointer(str(workdir / "checkpoints")) as ckpt:
    ckpt.save(5, {"w": np.arange(4096, dtype=np.float32)}, {"config": {}})
    ckpt.wait()
  data_dir = next(root for root, _, names in os.walk(workdir / "checkpoints" / "5")
                  if os.path.basename(root) == "d" and names)
  path = max((os.path.join(data_dir, n) for n in os.listdir(data_dir)), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(64)
    byte = f.read(1)
    f.seek(64)
    f.write(bytes([byte[0] ^ 0x01]))


# (id, extra args, extra env, expected text of the error line); {tmp} is the test's tmp_path.
CASES = [
    ("env_data_dir_missing", [], {"HVAE_DATA_DIR": "/nowhere"},
     "$HVAE_DATA_DIR=/nowhere: no such directory"),
    ("data_dir_missing", ["--data_dir=/nowhere"], {}, "--data_dir=/nowhere: no such directory"),
    ("data_dir_is_file", ["--data_dir={tmp}/file"], {}, "--data_dir={tmp}/file is a file"),
    ("data_missing", ["--data_dir={tmp}", "--config.data.source=npz"], {},
     "Offline archive not found: {tmp}/fashion_mnist.npz"),
    ("workdir_is_file", ["--workdir={tmp}/file"], {}, "--workdir={tmp}/file is a file"),
    ("workdir_under_file", ["--workdir={tmp}/file/run"], {},
     "cannot create the workdir {tmp}/file/run: Not a directory"),
    ("config_missing", ["--config=configs/nope.py"], {},
     "--config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    ("unknown_override", ["--config.train.typo=1"], {},
     "--config.train.typo=1: no such config key 'typo'"),
    ("unknown_top_level_override", ["--config.typo=1"], {},
     "--config.typo=1: no such config key 'typo'"),
    ("unparsable_override", ["--config.train.batch_size=abc"], {},
     "--config.train.batch_size=abc: invalid literal for int()"),
    ("unknown_flag", ["--nosuchflag"], {}, "Unknown command line flag 'nosuchflag'"),
    ("bad_value", ["--config.train.batch_size=-1"], {},
     "config.train.batch_size must be > 0, got -1"),
    ("bernoulli_on_colour", ["--config=configs/cifar_hvae.py", "--config.model.likelihood=bernoulli"],
     {}, "config.model.likelihood = 'bernoulli' does not fit cifar10"),
    ("dmol_on_binarized", ["--config.model.likelihood=dmol"], {},
     "config.model.likelihood = 'dmol' does not fit fashion_mnist"),
    ("batch_over_devices", ["--config.train.batch_size=33"],
     {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
     "train.batch_size=33 must be divisible by the 2 devices"),
    ("corrupt_checkpoint", ["--workdir={tmp}/run"], {}, "no intact checkpoint in {tmp}/run"),
    ("process_id_without_distributed", ["--process_id=0"], {},
     "--process_id needs --distributed"),
    ("distributed_partial", ["--distributed", "--num_processes=2"], {},
     "--coordinator_address, --process_id missing"),
    ("process_id_out_of_range", ["--distributed", "--coordinator_address=127.0.0.1:1234",
                                 "--num_processes=2", "--process_id=2"], {},
     "--process_id=2 must be in 0..1 (--num_processes=2)"),
    ("distributed_undetected", ["--distributed"], {}, "--distributed could not detect the processes"),
    ("coordinator_without_port", ["--distributed", "--coordinator_address=localhost",
                                  "--num_processes=2", "--process_id=0"], {},
     "--coordinator_address=localhost is not host:port"),
]


@pytest.mark.parametrize("case,args,env,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(tmp_path, case, args, env, expected):
  (tmp_path / "file").write_text("not a directory")
  if case == "corrupt_checkpoint":
    _corrupt_checkpoint(tmp_path / "run")
  fill = lambda text: text.replace("{tmp}", str(tmp_path))
  args = [fill(a) for a in args]
  if not any(a.startswith("--config=") for a in args):
    args.insert(0, "--config=configs/tiny.py")
  if not any(a.startswith("--workdir=") for a in args):
    args.append(f"--workdir={tmp_path / 'workdir'}")
  r = _run(*args, env=env)
  errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert len(errors) == 1 and fill(expected) in errors[0], r.stderr[-3000:]
  assert not (tmp_path / "workdir" / "checkpoints").exists()  # nothing was trained


def test_verbose_shows_the_traceback(tmp_path):
  r = _run("--config=configs/tiny.py", "--config.train.batch_size=-1", "--verbose",
           f"--workdir={tmp_path}")
  assert r.returncode != 0 and "Traceback" in r.stderr
  assert "ValueError: config.train.batch_size must be > 0" in r.stderr


def test_sigterm_during_start_up_says_interrupted(tmp_path):
  """SIGTERM (a scheduler's stop) while train.py loads the data, builds and compiles, before
  any step: one "Interrupted" line and exit 130, as README's "Stopping" says, nothing saved."""
  proc = subprocess.Popen(
      [sys.executable, "-u", os.path.join(REPO, "train.py"), "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'run'}"], cwd=REPO, env={**os.environ, "HVAE_DATA_DIR": DATA_DIR},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stdout:  # the line train.py prints once JAX is up, before the start-up work
    lines.append(line)
    if line.startswith("JAX devices:"):
      break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=600)
  out = "".join(lines) + out
  assert proc.returncode == 130, (out, err)
  interrupted = [l for l in out.splitlines() if l.startswith("Interrupted")]
  assert len(interrupted) == 1 and "during start-up" in interrupted[0], out
  assert "Traceback" not in err, err
  assert not os.path.isdir(tmp_path / "run" / "checkpoints") or not os.listdir(
      tmp_path / "run" / "checkpoints")


def test_sigterm_between_start_up_and_the_training_loop_says_interrupted(tmp_path):
  """SIGTERM at the hand-over from train.py's start-up to the training loop's own handler (here
  at the very call of train_and_evaluate, before its guard): one start-up line and exit 130,
  never the default disposition's silent exit 143."""
  script = (
      "import os, signal, sys, time\n"
      f"sys.path.insert(0, {REPO!r})\n"
      f"sys.argv = ['train.py', '--config=configs/tiny.py', '--workdir={tmp_path / 'run'}']\n"
      "from absl import app\n"
      "import train\n"
      "from hvae_jax import cli, training\n"
      "def at_the_hand_over(config, workdir):\n"
      "  os.kill(os.getpid(), signal.SIGTERM)\n"
      "  time.sleep(60)\n"
      "training.train_and_evaluate = at_the_hand_over\n"
      "app.run(train.main, flags_parser=cli.parse_flags_or_exit)\n")
  r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                     env={**os.environ, "HVAE_DATA_DIR": DATA_DIR}, timeout=300, check=False)
  assert r.returncode == 130, (r.stdout, r.stderr)
  interrupted = [l for l in r.stdout.splitlines() if l.startswith("Interrupted")]
  assert len(interrupted) == 1 and "during start-up" in interrupted[0], r.stdout
  assert "Traceback" not in r.stderr, r.stderr
