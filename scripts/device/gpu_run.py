"""One prepared device call: the reference on the same GPU, the paper's schedule continued,
and the S = 250 scores, all inside one time budget.

  python scripts/device/gpu_run.py prepare             # here: builds .gpu_carry/, prints the call
  <the run call it prints>                             # on the device machine: one call, <= 10 min
  python scripts/device/gpu_run.py unpack --files DIR  # here: returned files -> resumable workdir

`prepare` (run it in the checkout the session was started in: that is the tree a device call
sends) packs into the git-ignored folder .gpu_carry/: the data sets (xz-compressed arrays),
the newest local checkpoint of the paper model (default: the newer of $HOME/runs/fmnist_hvae,
the background CPU run, and workdirs/fmnist_hvae_gpu, where `unpack` puts what a GPU session
brought back) as tar parts, wheels of the packages the device image lacks (ml_collections,
tensorboardX), and the reference (.ref/hvae-oodd and ../shared/bench/ref_torch_bench.py, as
bench/compare_reference.py uses them). It checks that the tree that travels stays under
64 MiB and prints the `run` call (command, carry, timeout_s).

`run` (there) works in --work (default /tmp/gpu_run), each phase in its own process; a phase
that fails or runs out of time is recorded and the next one still runs:

  setup   rebuilds the data sets and the carried workdir (sha256 sums checked)
  bench   bench/compare_reference.py --device gpu: ours in float32 and the reference, same
          batch sizes and repetitions (train step; ELBO and all-k evaluation), then ours with
          model.dtype=bfloat16; FLOPs per call from XLA's cost analysis over the median time
          give TFLOP/s and model-FLOP utilisation against the GPU's datasheet peak
  train   train.py on the carried workdir (--config, the official split) in two legs. Leg 1
          runs to the first test evaluation at least --bf16_steps steps on and measures the
          loop's step rate; leg 2 continues for the time left, its max_steps computed from
          that rate. At the deadline a leg gets SIGINT, on which the training loop saves the step it
          is at; checkpoints every --checkpoint_every_steps bound what a kill can lose.
  bf16    leg 1's steps again from the same checkpoint with bfloat16 compute: its test
          bits/dim against leg 1's (same data, same keys), and its loop rate
  score   evaluate.py --iw_samples (250) on every FashionMNIST test image vs every MNIST one
          (and as many training images: evaluate.py's train-vs-test check and threshold)
  pack    the workdir's newest checkpoint, metrics.jsonl and eval/ as tar parts into --out

Budget. Everything ends by --budget_s (540 s) after the start, inside the call's 600 s. Time
for scoring is reserved first: images x S / (our all-k examples/s from bench, or --all_k_rate)
x --score_safety + --score_compile_s; then bench, training and the bf16 leg take what is
left before that reserve. Under --out (the device's $OUT) it writes figures.json (every
figure, rewritten after each phase, so a killed run returns what it measured), report.md,
test_bpd.png and the parts; the run call tees the log into gpu_run.log: at most 8 files.
Successive sessions add up the schedule: `unpack` the returned parts, `prepare` again (it
picks the newer checkpoint), run again; `--run_flags "--phases train,score"` skips the
benchmarks once they are measured, and "--phases train" leaves all the time to training.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from scripts.device import gpu_carry  # pylint: disable=wrong-import-position

CARRY = ".gpu_carry"
MANIFEST = "MANIFEST.json"
FIGURES = "figures.json"
PHASES = ("bench", "train", "bf16", "score")
DATA_ARRAYS = {"fashion_mnist.npz": ("train_images", "test_images"), "mnist.npz": ("test_images",)}
# Packages hvae_jax needs that the device image lacks (device KINDS.md's list, 2026-11-17).
WHEELS = ("ml_collections", "tensorboardX")
# The README's pip download for the device's Python 3.12 on x86-64.
PIP_DOWNLOAD = ("--no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
                "--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 "
                "--platform manylinux2014_x86_64").split()
# Dense datasheet peaks, TFLOP/s: float32 on CUDA cores, TF32 and bf16 on tensor cores (the
# SXM parts; the H200 has the H100's arithmetic). XLA's default precision lets float32 convs
# and dots use TF32 on these chips, so float32 steps are also set against the TF32 peak.
PEAK_TFLOPS = {"H100": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
               "H200": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4}}
# Our H100 figures of 2026-11-25 (bench/RESULTS.md), used when the bench phase did not run.
H100_ALL_K_RATE = 38073.0  # ELBO + every L^{>k}, one sample, batch 500, examples/s
H100_TRAIN_RATE = 14258.0 / 128  # train steps/s at batch 128
TARGETS = {"train_vs_reference": 3.0, "bf16_vs_fp32_train": 1.5, "bf16_bpd_abs_diff": 0.005,
           "llr_k1_auroc": 0.984}


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def carry_path(carry: str) -> str:
  return carry if os.path.isabs(carry) else os.path.join(REPO, carry)


# ------------------------------------------------------------------------------------------
# prepare (here)
# ------------------------------------------------------------------------------------------
def pick_workdir(choice: str) -> Optional[str]:
  """'none', a path, or 'auto': whichever default workdir holds the newest checkpoint."""
  if choice == "none":
    return None
  if choice != "auto":
    return choice
  candidates = [os.path.expanduser("~/runs/fmnist_hvae"),
                os.path.join(REPO, "workdirs", "fmnist_hvae_gpu")]
  steps = [(gpu_carry.latest_step(c), c) for c in candidates]
  steps = [(s, c) for s, c in steps if s is not None]
  return max(steps)[1] if steps else None


def fetch_wheels(dest: str) -> list[str]:
  """Wheels of WHEELS at the versions installed here (kept if already in `dest`)."""
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  os.makedirs(dest, exist_ok=True)
  out = []
  for name in WHEELS:
    version = metadata.version(name)
    norm = name.lower().replace("-", "_")
    have = [w for w in glob.glob(os.path.join(dest, "*.whl"))
            if os.path.basename(w).lower().startswith(f"{norm}-{version}-")]
    if not have:
      subprocess.run([sys.executable, "-m", "pip", "download", "-q", *PIP_DOWNLOAD, "-d", dest,
                      f"{name}=={version}"], check=True)
      have = [w for w in glob.glob(os.path.join(dest, "*.whl"))
              if os.path.basename(w).lower().startswith(f"{norm}-{version}-")]
    out += [os.path.basename(w) for w in have]
  return sorted(out)


def run_call(carry: str, run_flags: str) -> dict:
  """The `run` tool call that executes this driver on the device machine."""
  whl = f"{carry}/whl/*.whl"
  command = ("set -o pipefail; export PYTHONUNBUFFERED=1; "
             f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
             f"--upgrade --target /tmp/site {whl} && export PYTHONPATH=/tmp/site:$PWD || exit; "
             f"python3 scripts/device/gpu_run.py run --carry {carry} --out $OUT {run_flags} "
             "2>&1 | tee $OUT/gpu_run.log").replace("  ", " ")
  return {"command": command, "carry": [carry], "timeout_s": 600}


def prepare(a) -> dict:
  carry = carry_path(a.carry)
  old = {}
  if os.path.isfile(os.path.join(carry, MANIFEST)):
    with open(os.path.join(carry, MANIFEST), encoding="utf-8") as f:
      old = json.load(f)
  os.makedirs(carry, exist_ok=True)
  manifest = {"created": now_iso(), "data": {}, "workdir": None, "wheels": [], "reference": None}
  for npz, arrays in DATA_ARRAYS.items():
    print(f"data: {npz} {arrays}", flush=True)
    manifest["data"][npz] = gpu_carry.pack_arrays(os.path.join(a.data_dir, npz), arrays,
                                                  os.path.join(carry, "data"),
                                                  old.get("data", {}).get(npz))
  workdir = pick_workdir(a.workdir)
  shutil.rmtree(os.path.join(carry, "workdir"), ignore_errors=True)
  if workdir is not None:
    manifest["workdir"] = gpu_carry.pack_workdir(workdir, os.path.join(carry, "workdir"),
                                                 part_bytes=int(a.part_mib * gpu_carry.MIB))
    manifest["workdir"]["source"] = os.path.abspath(workdir)
    print(f"workdir: {workdir}, step {manifest['workdir']['step']}, "
          f"{manifest['workdir']['tar_bytes'] / gpu_carry.MIB:.1f} MiB", flush=True)
  else:
    print("workdir: none (the run trains from scratch)", flush=True)
  if not a.no_wheels:
    manifest["wheels"] = fetch_wheels(os.path.join(carry, "whl"))
  shutil.rmtree(os.path.join(carry, "ref"), ignore_errors=True)
  if os.path.isdir(os.path.join(a.ref_dir, "oodd")) and os.path.isfile(a.ref_bench):
    shutil.copytree(a.ref_dir, os.path.join(carry, "ref", "hvae-oodd"),
                    ignore=shutil.ignore_patterns(".git", "__pycache__"))
    shutil.copy(a.ref_bench, os.path.join(carry, "ref", "ref_torch_bench.py"))
    manifest["reference"] = {"dir": os.path.abspath(a.ref_dir),
                             "bench": os.path.abspath(a.ref_bench)}
  else:
    print(f"reference: not carried ({a.ref_dir}/oodd or {a.ref_bench} missing; see "
          "bench/compare_reference.py for the setup): the run skips the reference side")
  gpu_carry.write_json(os.path.join(carry, MANIFEST), manifest)
  sizes = gpu_carry.travel_bytes(REPO, [carry])
  manifest["travel_bytes"] = sizes
  print(f"travels: git files {sizes['git_files'] / gpu_carry.MIB:.1f} MiB + carry "
        f"{sum(sizes['carry'].values()) / gpu_carry.MIB:.1f} MiB = "
        f"{sizes['total'] / gpu_carry.MIB:.1f} MiB (limit {a.max_travel_mib:g} MiB)")
  if sizes["total"] > a.max_travel_mib * gpu_carry.MIB:
    raise SystemExit("error: the tree that travels is over the limit; remove untracked files "
                     "(`git status`) or carry less (--workdir none trains from scratch)")
  call = run_call(os.path.relpath(carry, REPO), a.run_flags)
  print("The run call (device tool `run`):\n" + json.dumps(call, indent=1))
  return manifest


# ------------------------------------------------------------------------------------------
# run (there)
# ------------------------------------------------------------------------------------------
def metrics_rows(workdir: str, split: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if r.get("split") == split]


def loop_rate(workdir: str, first: int, last: int, batch: int) -> Optional[float]:
  """Train steps/s of the loop between steps `first` and `last` (metrics.jsonl), evaluations
  included; the first logged interval, which holds the compile, is left out."""
  rates = [r["examples_per_s"] for r in metrics_rows(workdir, "train") if first < r["step"] <= last]
  rates = rates[1:]
  if not rates:
    return None
  return len(rates) / sum(batch / r for r in rates)  # harmonic mean: equal step counts


def test_bpd_at(workdir: str, step: int) -> Optional[float]:
  rows = [r["bpd"] for r in metrics_rows(workdir, "test") if r["step"] == step]
  return rows[-1] if rows else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
  return a / b if a and b else None


class Run:
  """The phases of one device call, their time budget and the figures they produce."""

  def __init__(self, a):
    self.a = a
    self.t0 = time.time()
    self.deadline = self.t0 + a.budget_s
    self.work = a.work
    self.carry = carry_path(a.carry)
    self.data_dir = os.path.join(self.work, "data")
    self.workdir = os.path.join(self.work, "run")
    self.cache = os.path.join(self.work, "jax_cache")
    self.phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    unknown = set(self.phases) - set(PHASES)
    if unknown:
      raise SystemExit(f"error: unknown phases {sorted(unknown)}; choose from {PHASES}")
    self.fig = {"started": now_iso(), "args": vars(a), "phases": {}, "targets": TARGETS}
    self.env = dict(os.environ, HVAE_DATA_DIR=self.data_dir, PYTHONUNBUFFERED="1",
                    TQDM_MININTERVAL=str(a.tqdm_interval_s))
    if a.device == "cpu":
      self.env["JAX_PLATFORMS"] = "cpu"

  # -- bookkeeping -----------------------------------------------------------------------
  def left(self) -> float:
    return self.deadline - time.time()

  def score_reserve(self) -> float:
    """Seconds kept for scoring and packing."""
    reserve = self.a.pack_reserve_s
    if "score" in self.phases and "score" not in self.fig["phases"]:
      reserve += self.fig["score_estimate"]["seconds"]
    return reserve

  def spare(self) -> float:
    return self.left() - self.score_reserve()

  def save(self):
    """figures.json, then report.md (a report bug must not cost the figures)."""
    self.fig["elapsed_s"] = time.time() - self.t0
    gpu_carry.write_json(os.path.join(self.a.out, FIGURES), self.fig)
    try:
      text = report(self.fig)
    except Exception:  # pylint: disable=broad-except
      text = f"report.md failed; figures.json has the figures.\n\n{traceback.format_exc()}"
    with open(os.path.join(self.a.out, "report.md"), "w", encoding="utf-8") as f:
      f.write(text)

  def child(self, name: str, cmd: list[str], limit: float, interrupt: bool = False) -> Optional[int]:
    """Runs `cmd` for at most `limit` s, in its own process group: --grace_s before the
    limit SIGINT (`interrupt`: the training loop then saves its step) or SIGTERM, at it SIGKILL."""
    rec = {"cmd": cmd, "limit_s": round(limit, 1), "started_at_s": round(time.time() - self.t0, 1)}
    self.fig["phases"][name] = rec
    if limit < self.a.min_phase_s:
      rec["status"] = f"skipped: {limit:.0f} s left for it"
      print(f"=== {name}: {rec['status']}", flush=True)
      self.save()
      return None
    print(f"=== {name} (limit {limit:.0f} s, {self.left():.0f} s left): {shlex.join(cmd)}",
          flush=True)
    t = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, start_new_session=True)
    try:
      rc = proc.wait(timeout=max(limit - self.a.grace_s, limit / 2))
      rec["status"] = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGINT if interrupt else signal.SIGTERM)
      try:
        rc = proc.wait(timeout=self.a.grace_s)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
      rec["status"] = f"stopped at its limit (exit {rc})"
    rec.update(rc=rc, wall_s=round(time.time() - t, 1))
    print(f"=== {name}: {rec['status']} after {rec['wall_s']} s", flush=True)
    self.save()
    return rc

  # -- phases ----------------------------------------------------------------------------
  def setup(self):
    import numpy as np  # pylint: disable=import-outside-toplevel
    from bench.train_step import load_config  # pylint: disable=import-outside-toplevel
    t = time.time()
    shutil.rmtree(self.work, ignore_errors=True)
    os.makedirs(self.a.out, exist_ok=True)
    with open(os.path.join(self.carry, MANIFEST), encoding="utf-8") as f:
      manifest = json.load(f)
    for entry in manifest["data"].values():
      gpu_carry.unpack_arrays(os.path.join(self.carry, "data"), entry, self.data_dir)
    start = 0
    if manifest.get("workdir"):
      start = gpu_carry.unpack_workdir(os.path.join(self.carry, "workdir"), manifest["workdir"],
                                       self.workdir)
    c = load_config(os.path.join(REPO, self.a.config), shlex.split(self.a.config_set))
    with np.load(os.path.join(self.data_dir, "fashion_mnist.npz")) as d:
      n_train, n_test = len(d["train_images"]), len(d["test_images"])
    with np.load(os.path.join(self.data_dir, "mnist.npz")) as d:
      n_ood = len(d["test_images"])
    spe = n_train // c.train.batch_size
    cap = lambda n: min(n, self.a.max_examples) if self.a.max_examples > 0 else n
    self.fig["setup"] = {
        "wall_s": round(time.time() - t, 1), "start_step": start, "config": self.a.config,
        "batch_size": c.train.batch_size, "steps_per_epoch": spe,
        "schedule_steps": int(c.train.epochs * spe), "schedule_epochs": c.train.epochs,
        "eval_every": max(1, int(round(self.a.eval_every_epochs * spe))),
        "carried_workdir": manifest.get("workdir"), "reference_carried": bool(manifest.get("reference")),
        "score_images": {"fashion_mnist_test": cap(n_test), "fashion_mnist_train": cap(n_test),
                         "mnist_test": cap(n_ood)}}
    self.estimate_score(self.a.all_k_rate, "--all_k_rate")
    print(f"=== setup: step {start} of {self.fig['setup']['schedule_steps']} "
          f"({start / spe:.1f} epochs) in {self.fig['setup']['wall_s']} s", flush=True)
    self.save()

  def estimate_score(self, rate: float, source: str):
    n = sum(self.fig["setup"]["score_images"].values())
    s = self.a.score_compile_s + n * self.a.iw_samples / rate * self.a.score_safety
    self.fig["score_estimate"] = {"seconds": round(s, 1), "images": n, "all_k_rate": rate,
                                  "rate_from": source}

  def bench(self):
    ref = os.path.join(self.carry, "ref")
    has_ref = (self.fig["setup"]["reference_carried"] and not self.a.skip_ref
               and os.path.isdir(os.path.join(ref, "hvae-oodd")))
    base = [sys.executable, "bench/compare_reference.py", "--device", self.a.device,
            "--threads", str(os.cpu_count()), "--busy_probe_s", "0", "--skip_iw",
            "--config", self.a.config, *shlex.split(self.a.bench_flags)]
    runs = {"float32": base + (["--ref_python", self.a.ref_python,
                                "--ref_dir", os.path.join(ref, "hvae-oodd"),
                                "--ref_bench", os.path.join(ref, "ref_torch_bench.py")]
                               if has_ref else ["--skip_ref"]),
            "bfloat16": base + ["--skip_ref", "--set", "model.dtype=bfloat16"]}
    out = self.fig["bench"] = {"reference_run": has_ref}
    for dtype in self.a.bench_dtypes.split(","):
      cmd = runs[dtype]
      path = os.path.join(self.work, f"compare_{dtype}.json")
      self.child(f"bench_{dtype}", cmd + ["--out", path], min(self.a.bench_limit_s, self.spare()))
      if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
          out[dtype] = json.load(f)
    self.fig["bench_summary"] = bench_summary(out, self.a.peak_tflops)
    rate = self.fig["bench_summary"].get("ours_float32", {}).get("all_k")
    if rate:
      self.estimate_score(rate, "bench: our float32 all-k examples/s")
    self.save()

  def train_cmd(self, workdir: str, max_steps: int, *extra: str) -> list[str]:
    return [sys.executable, "train.py", f"--config={self.a.config}", f"--workdir={workdir}",
            f"--config.train.max_steps={max_steps}",
            f"--config.train.eval_every_epochs={self.a.eval_every_epochs}",
            f"--config.train.checkpoint_every_steps={self.a.checkpoint_every_steps}",
            "--config.train.sample_grid=0", f"--config.compilation_cache_dir={self.cache}",
            *(f"--config.{kv}" for kv in shlex.split(self.a.config_set)), *extra]

  def bench_step_rate(self) -> tuple[float, str]:
    ex_s = self.fig.get("bench_summary", {}).get("ours_float32", {}).get("train")
    if ex_s:
      return (ex_s / self.fig["setup"]["batch_size"] * self.a.loop_efficiency,
              "bench train step x --loop_efficiency")
    return self.a.train_rate, "--train_rate"

  def train(self):
    s = self.fig["setup"]
    start, total, batch = s["start_step"], s["schedule_steps"], s["batch_size"]
    if self.a.max_train_steps > 0:
      total = min(total, start + self.a.max_train_steps)
    t = self.fig["train"] = {"start_step": start, "end_step": start, "target_step": total}
    if start >= total:
      t["status"] = "nothing to do: the schedule (or --max_train_steps) is done"
      return
    # Leg 1: to the first test evaluation >= --bf16_steps on; the bf16 leg repeats it.
    every = s["eval_every"]
    check = min(total, every * math.ceil((start + self.a.bf16_steps) / every))
    rate, source = self.bench_step_rate()
    need = self.a.startup_s + (check - start) / rate
    t.update(check_step=check, leg1_estimate_s=round(need, 1), leg1_rate_from=source)
    if "bf16" in self.phases:
      bf16_dir = os.path.join(self.work, "bf16")
      if os.path.isdir(self.workdir):
        shutil.copytree(self.workdir, bf16_dir)
    if need > self.spare():
      t["status"] = f"skipped: leg 1 needs ~{need:.0f} s, {self.spare():.0f} s left"
      self.save()
      return
    t0 = time.time()
    self.child("train_leg1", self.train_cmd(self.workdir, check), self.spare(), interrupt=True)
    wall1 = time.time() - t0
    t["end_step"] = gpu_carry.latest_step(self.workdir) or start
    rate1 = loop_rate(self.workdir, start, check, batch)
    t.update(leg1_steps_per_s=rate1, leg1_wall_s=round(wall1, 1))
    if t["end_step"] < check:
      t["status"] = "leg 1 did not reach its evaluation step"
      self.save()
      return
    if rate1:
      t["leg1_startup_s"] = round(max(0.0, wall1 - (check - start) / rate1), 1)
    else:  # too few logged intervals: the whole leg's rate, start-up as assumed
      rate1 = (check - start) / wall1
      t["leg1_startup_s"] = self.a.startup_s
    t["fp32_test_bpd_at_check"] = test_bpd_at(self.workdir, check)
    if "bf16" in self.phases:
      self.bf16(bf16_dir, start, check, need)
    # Leg 2: the time left, from leg 1's measured rate and start-up (compile from the cache).
    room = self.spare() - t["leg1_startup_s"]
    steps = int(room * rate1 * self.a.rate_margin)
    leg2_end = min(total, check + max(0, steps))
    t["leg2_target_step"] = leg2_end
    if leg2_end > check:
      self.child("train_leg2", self.train_cmd(self.workdir, leg2_end), self.spare(),
                 interrupt=True)
    t["end_step"] = gpu_carry.latest_step(self.workdir) or check
    t["epochs_done"] = t["end_step"] / s["steps_per_epoch"]
    t["epochs_this_run"] = (t["end_step"] - start) / s["steps_per_epoch"]
    t["leg2_steps_per_s"] = loop_rate(self.workdir, check, t["end_step"], batch)
    t["status"] = "ok"
    self.save()

  def bf16(self, bf16_dir: str, start: int, check: int, need: float):
    batch = self.fig["setup"]["batch_size"]
    b = self.fig["bf16_check"] = {"from_step": start, "to_step": check}
    limit = min(self.spare(), 2 * need + self.a.startup_s)
    self.child("bf16_leg", self.train_cmd(bf16_dir, check, "--config.model.dtype=bfloat16"), limit)
    fp32 = self.fig["train"]["fp32_test_bpd_at_check"]
    bf16 = test_bpd_at(bf16_dir, check)
    b.update(fp32_test_bpd=fp32, bf16_test_bpd=bf16,
             abs_diff=abs(bf16 - fp32) if bf16 is not None and fp32 is not None else None,
             fp32_loop_steps_per_s=self.fig["train"]["leg1_steps_per_s"],
             bf16_loop_steps_per_s=loop_rate(bf16_dir, start, check, batch))
    b["bf16_vs_fp32_loop"] = ratio(b["bf16_loop_steps_per_s"], b["fp32_loop_steps_per_s"])
    self.save()

  def score(self):
    out = os.path.join(self.workdir, "eval")
    cmd = [sys.executable, "evaluate.py", f"--workdir={self.workdir}", "--ood=mnist",
           f"--iw_samples={self.a.iw_samples}", f"--output={out}",
           f"--compilation_cache_dir={self.cache}"]
    if self.a.max_examples > 0:
      cmd.append(f"--max_examples={self.a.max_examples}")
    self.child("score", cmd, self.left() - self.a.pack_reserve_s)
    path = os.path.join(out, "results.json")
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        res = json.load(f)
      self.fig["scores"] = {k: res.get(k) for k in ("settings", "bits_per_dim", "ood",
                                                     "examples_per_s", "train_vs_test")}
      with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
        self.fig["scores_markdown"] = f.read()
    self.save()

  def pack(self):
    from hvae_jax import plots  # pylint: disable=import-outside-toplevel
    if gpu_carry.latest_step(self.workdir) is not None:
      self.fig["pack"] = gpu_carry.pack_workdir(self.workdir, self.a.out, with_eval=True,
                                                part_bytes=int(self.a.part_mib * gpu_carry.MIB))
    rows = metrics_rows(self.workdir, "test")
    self.fig["test_bpd_curve"] = [[r["step"], r.get("epoch"), r["bpd"]] for r in rows]
    if rows:
      plots.plot_curve([r["epoch"] for r in rows], [r["bpd"] for r in rows],
                       os.path.join(self.a.out, "test_bpd.png"), "epoch", "test bits/dim",
                       f"{self.a.config}: test bits/dim (ELBO, 1 sample)")
    self.fig["finished"] = now_iso()
    self.save()

  def run(self):
    """setup, then the chosen phases, then pack; an error in one is recorded, not fatal."""
    try:
      self.setup()
      for name in ("bench", "train", "score"):
        if name in self.phases:
          try:
            getattr(self, name)()
          except Exception:  # pylint: disable=broad-except
            self.fig.setdefault("errors", {})[name] = traceback.format_exc()
            print(f"=== {name}: error\n{traceback.format_exc()}", flush=True)
            self.save()
    finally:
      self.pack()
    with open(os.path.join(self.a.out, "report.md"), encoding="utf-8") as f:
      print(f.read(), flush=True)


def bench_summary(bench: dict, peak_override: str) -> dict:
  """Examples/s, ratios, TFLOP/s and MFU from compare_reference.py's JSON per dtype."""
  rows = {"train": "train", "eval_elbo": "eval_elbo", "all_k": "all_k"}
  s = {}
  for dtype in ("float32", "bfloat16"):
    r = bench.get(dtype)
    if not r:
      continue
    ours = r["ours"]
    s[f"ours_{dtype}"] = {k: ours.get(v, {}).get("examples_per_s") for k, v in rows.items()}
    kind = ours.get("info", {}).get("device_kind", "")
    peaks = next((p for name, p in PEAK_TFLOPS.items() if name in kind), {})
    peaks = dict(peaks, **{k: float(v) for k, v in
                           (kv.split("=") for kv in peak_override.split(",") if kv)})
    flops = ours.get("flops", {}).get("train_step")
    med = ours.get("train", {}).get("median_s")
    tflops = flops / med / 1e12 if flops and med else None
    mfu = {}
    if tflops:
      for p in (["float32", "tf32"] if dtype == "float32" else ["bfloat16"]):
        if p in peaks:
          mfu[p] = tflops / peaks[p]
    s[f"ours_{dtype}"].update(device_kind=kind, train_gflop_per_step=flops and flops / 1e9,
                              train_tflops=tflops, train_mfu=mfu, peaks_tflops=peaks,
                              compile_s=ours.get("compile_s"))
    if r.get("reference"):
      ref = r["reference"]
      s["reference"] = {k: ref.get(v, {}).get("examples_per_s") for k, v in rows.items()}
      s["reference"]["device"] = ref.get("info", {}).get("device")
    if r.get("settings", {}).get("reference_error"):
      s["reference_error"] = r["settings"]["reference_error"]
    s[f"table_{dtype}"] = r.get("table")
  o32, o16, ref = s.get("ours_float32", {}), s.get("ours_bfloat16", {}), s.get("reference", {})
  s["ratios"] = {f"ours_fp32_vs_reference_{k}": ratio(o32.get(k), ref.get(k)) for k in rows}
  s["ratios"].update({f"bf16_vs_fp32_{k}": ratio(o16.get(k), o32.get(k)) for k in rows})
  return s


def fmt(v, spec: str = ".3g") -> str:
  return "-" if v is None else format(v, spec)


def report(fig: dict) -> str:
  """report.md: what the run measured, the targets, Table 1/2 from evaluate.py."""
  out = [f"# Prepared GPU run (scripts/device/gpu_run.py), started {fig['started']}", ""]
  s = fig.get("setup", {})
  if s:
    out.append(f"Config `{s['config']}`, start step {s['start_step']} "
               f"({s['start_step'] / s['steps_per_epoch']:.1f} of {s['schedule_epochs']:g} "
               f"epochs), batch {s['batch_size']}, {s['steps_per_epoch']} steps/epoch.")
  out += ["", "| phase | status | wall s |", "|---|---|---|"]
  out += [f"| {n} | {p.get('status')} | {p.get('wall_s', '-')} |" for n, p in fig["phases"].items()]
  for name, tb in fig.get("errors", {}).items():
    out.append(f"\nError in {name}: `{tb.strip().splitlines()[-1]}` (figures.json has the traceback)")
  b = fig.get("bench_summary")
  if b:
    o32, o16, ref = (b.get(k, {}) for k in ("ours_float32", "ours_bfloat16", "reference"))
    out += ["", f"## Speed on {o32.get('device_kind') or o16.get('device_kind')} "
            f"(reference on {ref.get('device', '-')})", "",
            *([f"Reference side failed: {b['reference_error']}", ""] if b.get("reference_error") else []),
            "| measure (examples/s) | ours fp32 | ours bf16 | reference | fp32/ref | bf16/fp32 |",
            "|---|---|---|---|---|---|"]
    for k in ("train", "eval_elbo", "all_k"):
      out.append(f"| {k} | {fmt(o32.get(k), ',.0f')} | {fmt(o16.get(k), ',.0f')} | "
                 f"{fmt(ref.get(k), ',.1f')} | {fmt(b['ratios'][f'ours_fp32_vs_reference_{k}'], '.2f')} | "
                 f"{fmt(b['ratios'][f'bf16_vs_fp32_{k}'], '.2f')} |")
    for name, o in (("fp32", o32), ("bf16", o16)):
      if o:
        mfu = ", ".join(f"{v:.1%} of the {p} peak ({o['peaks_tflops'][p]:g})"
                        for p, v in o["train_mfu"].items()) or "no peak known for this device"
        out.append(f"\nTrain step {name}: {fmt(o['train_gflop_per_step'], '.1f')} GFLOP/step "
                   f"(XLA cost analysis), {fmt(o['train_tflops'], '.2f')} TFLOP/s: {mfu}.")
  t = fig.get("train")
  if t:
    out += ["", "## Training", "",
            f"Steps {t['start_step']} -> {t['end_step']} (target {t.get('leg2_target_step', '-')}); "
            f"loop {fmt(t.get('leg1_steps_per_s'), '.1f')} / {fmt(t.get('leg2_steps_per_s'), '.1f')} "
            f"steps/s (legs 1/2); {fmt(t.get('epochs_this_run'), '.2f')} epochs this run, "
            f"{fmt(t.get('epochs_done'), '.2f')} in all. {t.get('status', '')}"]
  c = fig.get("bf16_check")
  if c:
    out += ["", f"bf16 check, steps {c['from_step']} -> {c['to_step']}: test bits/dim fp32 "
            f"{fmt(c.get('fp32_test_bpd'), '.4f')}, bf16 {fmt(c.get('bf16_test_bpd'), '.4f')} "
            f"(|diff| {fmt(c.get('abs_diff'), '.4f')}); loop bf16/fp32 "
            f"{fmt(c.get('bf16_vs_fp32_loop'), '.2f')}x."]
  curve = fig.get("test_bpd_curve")
  if curve:
    out += ["", "Test bits/dim curve (last 5 of %d): " % len(curve)
            + ", ".join(f"step {st}: {bpd:.4f}" for st, _, bpd in curve[-5:])]
  out += ["", "## Targets", ""] + [f"- {line}" for line in targets(fig)]
  if fig.get("scores_markdown"):
    out += ["", fig["scores_markdown"]]
  return "\n".join(out) + "\n"


def targets(fig: dict) -> list[str]:
  b = fig.get("bench_summary", {}).get("ratios", {})
  c = fig.get("bf16_check", {})
  auroc = (fig.get("scores") or {}).get("ood", {}).get("mnist", {}).get("metrics", {}) \
      .get("llr_k1", {}).get("auroc")
  checks = [("train step vs reference", b.get("ours_fp32_vs_reference_train"), ">=",
             TARGETS["train_vs_reference"]),
            ("bf16 vs fp32 train step", b.get("bf16_vs_fp32_train"), ">=",
             TARGETS["bf16_vs_fp32_train"]),
            ("|bf16 - fp32| test bits/dim", c.get("abs_diff"), "<=", TARGETS["bf16_bpd_abs_diff"]),
            ("LLR^{>1} AUROC, FashionMNIST vs MNIST", auroc, ">=", TARGETS["llr_k1_auroc"])]
  lines = []
  for name, v, op, target in checks:
    met = None if v is None else (v >= target if op == ">=" else v <= target)
    verdict = {None: "not measured", True: "met", False: "missed"}[met]
    lines.append(f"{name}: {fmt(v, '.4g')} (target {op} {target:g}): {verdict}")
  return lines


# ------------------------------------------------------------------------------------------
# unpack (here)
# ------------------------------------------------------------------------------------------
def unpack(a):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from hvae_jax import checkpoints  # pylint: disable=import-outside-toplevel
  with open(os.path.join(a.files, FIGURES), encoding="utf-8") as f:
    fig = json.load(f)
  if not fig.get("pack"):
    raise SystemExit(f"error: {a.files}/{FIGURES} lists no checkpoint parts (the run packed none)")
  step = gpu_carry.unpack_workdir(a.files, fig["pack"], a.dest)
  state, _ = checkpoints.load_checkpoint_dir(a.dest)
  restored = int(state["step"])
  if restored != step:
    raise SystemExit(f"error: {a.dest}'s latest checkpoint is step {restored}, the parts hold "
                     f"step {step} (an older workdir with newer steps is there?)")
  n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state["params"]))
  record = os.path.join(a.dest, "gpu_runs", f"step_{step}")
  os.makedirs(record, exist_ok=True)
  for name in os.listdir(a.files):
    if ".tar.part-" not in name:
      shutil.copy(os.path.join(a.files, name), record)
  print(f"verified: {a.dest} resumes at step {step} ({n:,} parameters; parts' sha256 sums "
        f"match); the run's files are in {record}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="mode", required=True)
  p = sub.add_parser("prepare", help="here: build the carry folder and print the run call")
  p.add_argument("--carry", default=CARRY, help="carry folder (relative to the repo root)")
  p.add_argument("--workdir", default="auto",
                 help="workdir to continue: 'auto' (newest of ~/runs/fmnist_hvae and "
                 "workdirs/fmnist_hvae_gpu), a path, or 'none' (train from scratch)")
  p.add_argument("--data_dir", default=os.environ.get("HVAE_DATA_DIR") or
                 os.path.join(os.path.dirname(REPO), "shared", "data"))
  p.add_argument("--ref_dir", default=os.environ.get("HVAE_OODD_DIR",
                                                     os.path.join(REPO, ".ref", "hvae-oodd")))
  p.add_argument("--ref_bench", default=os.path.join(os.path.dirname(REPO), "shared", "bench",
                                                     "ref_torch_bench.py"))
  p.add_argument("--no_wheels", action="store_true", help="carry no wheels (CPU tests)")
  p.add_argument("--part_mib", type=float, default=gpu_carry.PART_BYTES / gpu_carry.MIB)
  p.add_argument("--max_travel_mib", type=float, default=64.0)
  p.add_argument("--run_flags", default="", help="extra flags for `run` in the printed call")

  r = sub.add_parser("run", help="there: all phases within the budget")
  r.add_argument("--carry", default=CARRY)
  r.add_argument("--out", default=os.environ.get("OUT", os.path.join(REPO, "out", "gpu_run")))
  r.add_argument("--work", default="/tmp/gpu_run", help="scratch folder (emptied first)")
  r.add_argument("--budget_s", type=float, default=540.0, help="everything ends by then")
  r.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {PHASES}")
  r.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
  r.add_argument("--config", default="configs/fmnist_hvae.py")
  r.add_argument("--config_set", default="",
                 help="config overrides 'key=value ...' for training, e.g. 'train.batch_size=64'")
  r.add_argument("--bench_flags", default="--train_warmup 5 --train_iters 50 --eval_warmup 3 "
                 "--eval_iters 20 --llr_s", help="flags for bench/compare_reference.py")
  r.add_argument("--bench_limit_s", type=float, default=150.0, help="per bench process")
  r.add_argument("--bench_dtypes", default="float32,bfloat16", help="our compute dtypes timed")
  r.add_argument("--skip_ref", action="store_true", help="no reference side even if carried")
  r.add_argument("--ref_python", default=sys.executable,
                 help="Python with torch (+ seaborn, pyyaml: oodd imports them) for the reference")
  r.add_argument("--peak_tflops", default="", help="override peaks, e.g. 'bfloat16=790,tf32=400'")
  r.add_argument("--eval_every_epochs", type=float, default=1.0, help="test bits/dim curve step")
  r.add_argument("--checkpoint_every_steps", type=int, default=2340)
  r.add_argument("--max_train_steps", type=int, default=-1, help="cap on this run's steps")
  r.add_argument("--bf16_steps", type=int, default=400, help="least steps of the bf16 check")
  r.add_argument("--loop_efficiency", type=float, default=0.6,
                 help="train.py's loop rate / the bench's step rate, for leg 1's estimate")
  r.add_argument("--train_rate", type=float, default=H100_TRAIN_RATE * 0.6,
                 help="steps/s for leg 1's estimate when the bench did not run")
  r.add_argument("--rate_margin", type=float, default=0.9, help="leg 2 plans this x the rate")
  r.add_argument("--startup_s", type=float, default=40.0,
                 help="train.py start-up + compile, for leg 1's estimate")
  r.add_argument("--iw_samples", type=int, default=250)
  r.add_argument("--max_examples", type=int, default=-1, help="images per scored set (-1 all)")
  r.add_argument("--all_k_rate", type=float, default=H100_ALL_K_RATE,
                 help="our all-k examples/s (S = 1) when the bench did not run")
  r.add_argument("--score_safety", type=float, default=1.0, help="x the scoring estimate")
  r.add_argument("--score_compile_s", type=float, default=40.0)
  r.add_argument("--pack_reserve_s", type=float, default=20.0)
  r.add_argument("--min_phase_s", type=float, default=10.0, help="skip a phase with less")
  r.add_argument("--grace_s", type=float, default=20.0,
                 help="a phase's time between SIGINT/SIGTERM and SIGKILL, inside its limit")
  r.add_argument("--part_mib", type=float, default=gpu_carry.PART_BYTES / gpu_carry.MIB)
  r.add_argument("--tqdm_interval_s", type=float, default=10.0, help="progress bar updates")

  u = sub.add_parser("unpack", help="here: returned files -> resumable workdir, verified")
  u.add_argument("--files", required=True, help="folder with the run's returned files")
  u.add_argument("--dest", default=os.path.join(REPO, "workdirs", "fmnist_hvae_gpu"))
  a = ap.parse_args()
  if a.mode == "prepare":
    prepare(a)
  elif a.mode == "run":
    Run(a).run()
  else:
    unpack(a)


if __name__ == "__main__":
  main()
