"""scripts/device/gpu_run.py, the prepared device call, end to end on CPU with tiny settings.

The driver's logic (carry in, phases under a deadline, figures, checkpoint parts, Table rows,
unpack) runs here exactly as on the GPU; only the device and the sizes differ. The reference
side runs when torch, oodd's imports and a reference checkout are at hand.
"""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from scripts.device import gpu_carry, gpu_run
from hvae_jax import checkpoints
from tests.helpers import REPO, fmnist_slice, mnist_slice

REF_DIR = os.path.join(REPO, ".ref", "hvae-oodd")
REF_BENCH = os.path.join(os.path.dirname(REPO), "shared", "bench", "ref_torch_bench.py")
START_STEP = 40  # tiny_workdir's checkpoint
RUN_STEPS = 20  # --max_train_steps: legs 1 and 2 end at step 60


def reference_python():
  """A Python that can import the reference harness's needs, or (None, why not)."""
  if not (os.path.isdir(os.path.join(REF_DIR, "oodd")) and os.path.isfile(REF_BENCH)):
    return None, (f"no reference checkout at {REF_DIR} or harness at {REF_BENCH} "
                  "(see bench/compare_reference.py for the setup)")
  for py in (os.environ.get("HVAE_REF_PYTHON"), os.path.join(REPO, ".venv-ref", "bin", "python"),
             sys.executable):
    if py and os.path.exists(py) and subprocess.run(
        [py, "-c", "import torch, seaborn, yaml"], capture_output=True).returncode == 0:
      return py, ""
  return None, "no Python here imports torch, seaborn and yaml (the reference's imports)"


def tree_files(root):
  return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
          for d, _, fs in os.walk(root) for f in fs}


def test_workdir_parts_round_trip_exactly(tiny_workdir, tmp_path):
  manifest = gpu_carry.pack_workdir(tiny_workdir, str(tmp_path / "parts"), part_bytes=100_000)
  assert manifest["step"] == START_STEP and len(manifest["parts"]) > 1
  dest = str(tmp_path / "dest")
  assert gpu_carry.unpack_workdir(str(tmp_path / "parts"), manifest, dest) == START_STEP
  step_dir = os.path.join("checkpoints", str(START_STEP))
  assert tree_files(os.path.join(dest, step_dir)) == tree_files(os.path.join(tiny_workdir, step_dir))
  for name in gpu_carry.WORKDIR_FILES:
    assert tree_files(dest)[name] == tree_files(tiny_workdir)[name]
  state, _ = checkpoints.load_checkpoint_dir(dest)
  assert int(state["step"]) == START_STEP
  with open(tmp_path / "parts" / manifest["parts"][1]["name"], "r+b") as f:
    f.write(b"x")  # one flipped byte
  with pytest.raises(gpu_carry.CarryError, match="part-01"):
    gpu_carry.unpack_workdir(str(tmp_path / "parts"), manifest, str(tmp_path / "again"))


def test_data_arrays_round_trip_exactly(tmp_path):
  x = fmnist_slice(50)
  np.savez(tmp_path / "fashion_mnist.npz", train_images=x, test_images=x[:5], labels=np.arange(3))
  entry = gpu_carry.pack_arrays(str(tmp_path / "fashion_mnist.npz"), ("train_images", "test_images"),
                                str(tmp_path / "carry"))
  assert gpu_carry.pack_arrays(str(tmp_path / "fashion_mnist.npz"),
                               ("train_images", "test_images"), str(tmp_path / "carry"),
                               cached=entry) is entry  # unchanged source: not redone
  out = gpu_carry.unpack_arrays(str(tmp_path / "carry"), entry, str(tmp_path / "data"))
  with np.load(out) as f:
    assert sorted(f.files) == ["test_images", "train_images"]
    np.testing.assert_array_equal(f["train_images"], x)
  entry["arrays"]["test_images"]["npy_sha256"] = "0" * 64
  with pytest.raises(gpu_carry.CarryError, match="sha256"):
    gpu_carry.unpack_arrays(str(tmp_path / "carry"), entry, str(tmp_path / "data2"))


@pytest.fixture(scope="module")
def prepared(tiny_workdir, tmp_path_factory):
  """A carry folder for the tiny model: 2,560 training images (80 steps an epoch)."""
  root = tmp_path_factory.mktemp("gpu_run")
  data = root / "data"
  data.mkdir()
  np.savez(data / "fashion_mnist.npz", train_images=fmnist_slice(2560, "train"),
           test_images=fmnist_slice(64))
  np.savez(data / "mnist.npz", test_images=mnist_slice(64))
  cmd = [sys.executable, "scripts/device/gpu_run.py", "prepare", "--carry", str(root / "carry"),
         "--workdir", tiny_workdir, "--data_dir", str(data), "--no_wheels",
         "--ref_dir", REF_DIR, "--ref_bench", REF_BENCH]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
  return root, out


def run_driver(root, out_name, *flags):
  """The printed run call's shape: the driver's output tee'd into $OUT/gpu_run.log."""
  out = root / out_name
  out.mkdir()
  env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "").replace(
                 "--xla_force_host_platform_device_count=2", ""))  # one device, as there
  cmd = [sys.executable, "scripts/device/gpu_run.py", "run", "--carry", str(root / "carry"),
         "--out", str(out), "--work", str(root / f"work_{out_name}"), "--device", "cpu",
         "--config", "configs/tiny.py", *flags]
  proc = subprocess.run(["bash", "-c", f"set -o pipefail; {shlex.join(cmd)} 2>&1 | tee "
                         f"{out}/gpu_run.log"], cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout[-3000:]
  with open(out / gpu_run.FIGURES, encoding="utf-8") as f:
    return out, json.load(f)


def test_prepare_prints_the_run_call(prepared):
  root, out = prepared
  call = json.loads(out[out.index("{"):])
  assert len(call["command"]) <= 2000 and call["timeout_s"] == 600
  assert call["carry"] == [os.path.relpath(root / "carry", REPO)]
  assert "scripts/device/gpu_run.py run" in call["command"]
  assert "tee $OUT/gpu_run.log" in call["command"]
  assert "travels:" in out


def test_run_without_time_skips_training_and_returns_the_carried_checkpoint(prepared):
  """The deadline logic: leg 1 does not fit, so nothing runs; the checkpoint still comes back."""
  root, _ = prepared
  out, fig = run_driver(root, "no_time", "--phases", "train", "--budget_s", "60",
                        "--startup_s", "1000")
  assert fig["train"]["status"].startswith("skipped: leg 1 needs")
  assert fig["pack"]["step"] == START_STEP
  assert fig["score_estimate"]["images"] == 64 * 3


@pytest.fixture(scope="module")
def full_run(prepared):
  root, _ = prepared
  ref_py, why = reference_python()
  # Limits far above what these steps need: on a busy 2-core machine they must not bind.
  flags = ["--budget_s", "3000", "--bench_limit_s", "1500", "--bench_dtypes", "float32",
           "--bench_flags", "--train_batch 4 --train_warmup 1 --train_iters 2 --eval_batch 8 "
           "--eval_warmup 0 --eval_iters 1 --llr_s", "--eval_every_epochs", "0.125",
           "--bf16_steps", "5", "--max_train_steps", str(RUN_STEPS), "--iw_samples", "2",
           "--startup_s", "300", "--score_compile_s", "30"]
  flags += ["--ref_python", ref_py] if ref_py else ["--skip_ref"]
  out, fig = run_driver(root, "full", *flags)
  return out, fig, why


@pytest.mark.slow
def test_full_run_writes_figures_parts_and_tables(full_run, tmp_path):
  out, fig, _ = full_run
  files = sorted(os.listdir(out))
  assert len(files) <= 8 and all(os.path.getsize(out / f) <= 16 * gpu_carry.MIB for f in files)
  assert {"figures.json", "report.md", "test_bpd.png", "gpu_run.log"} <= set(files)
  for phase in ("bench_float32", "train_leg1", "bf16_leg", "train_leg2", "score"):
    assert fig["phases"][phase]["status"] == "ok", (phase, fig["phases"][phase])
  ours = fig["bench_summary"]["ours_float32"]
  assert ours["train"] > 0 and ours["all_k"] > 0 and ours["train_gflop_per_step"] > 0
  assert fig["score_estimate"]["rate_from"].startswith("bench")
  t = fig["train"]
  assert (t["check_step"], t["end_step"]) == (50, START_STEP + RUN_STEPS)
  c = fig["bf16_check"]
  assert c["to_step"] == 50 and np.isfinite(c["abs_diff"])
  assert [row[0] for row in fig["test_bpd_curve"]][-2:] == [50, 60]
  mnist = fig["scores"]["ood"]["mnist"]["metrics"]
  assert 0 <= mnist["llr_k1"]["auroc"] <= 1
  assert fig["scores"]["settings"]["iw_samples_elbo"] == 2
  report = (out / "report.md").read_text()
  assert "paper Table 1" in report and "paper Table 2" in report and "## Targets" in report
  # The returned parts become a workdir here that resumes at the new step.
  dest = tmp_path / "back"
  proc = subprocess.run([sys.executable, "scripts/device/gpu_run.py", "unpack", "--files", str(out),
                         "--dest", str(dest)], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert f"resumes at step {START_STEP + RUN_STEPS}" in proc.stdout
  assert os.path.isfile(dest / "eval" / "results.md")


@pytest.mark.slow
def test_full_run_reference_side(full_run):
  _, fig, why = full_run
  if why:
    pytest.skip(f"reference side not run: {why}")
  b = fig["bench_summary"]
  assert b["reference"]["train"] > 0 and b["reference"]["device"] == "cpu"
  assert b["ratios"]["ours_fp32_vs_reference_train"] > 0
