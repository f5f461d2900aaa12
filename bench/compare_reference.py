"""Side-by-side speed: hvae-jax against the authors' PyTorch reference (hvae-oodd), CPU or GPU.

  python bench/compare_reference.py --threads 2 --out compare.json
  python bench/compare_reference.py --quick            # smoke run, a few minutes
  python bench/compare_reference.py --skip_ref         # our side only
  python bench/compare_reference.py --device gpu --threads 16 --busy_probe_s 0 --skip_iw
  python bench/compare_reference.py --skip_ref --set model.dtype=bfloat16   # bf16 compute

One invocation measures both implementations of the FashionMNIST HVAE on random binarized
inputs, with the same batch sizes, the same number of CPU cores and the same warm-up/timed
repetitions, and prints ours/reference throughput ratios for

  - a train step (forward, ELBO with free bits and KL warm-up, backward, Adam), batch 128;
  - the one-sample ELBO at the evaluation batch (500, ood-llr.py's default);
  - every score at once, ELBO + L^{>1} + L^{>2} (one sample). Ours: one call of
    `ood.make_image_score_fn`, what TrainedModel.score and evaluate.py run (each image with its
    own key; at most --max_passes image passes in flight, the batch scored in groups past
    that; with skip_inference='sample' one bottom-up pass serves every k, with the paper
    configs' 'mean' each k has its own, as in the reference). Reference: one ELBO pass + one
    pass per k, the passes ood-llr.py makes (it credits the reference with one ELBO pass
    shared by both k; running ood-llr.py once per k, as the script is written, would make 2
    passes per k);
  - LLR^{>k} for every k with S = 1, 10, 100 importance samples. Ours: the same scorer with
    `iw_samples_elbo = iw_samples_lk = S` (samples vmapped in chunks, folded with logaddexp).
    Reference: ood-llr.py's method, a Python loop of S sequential forward passes per term
    (ELBO, L^{>1}, L^{>2}), `torch.stack`, `oodd.utils.log_sum_exp`. Reference runs with
    S > --ref_max_s are not made: their time is extrapolated linearly (time(S) = time(S0) * S/S0
    from the largest measured S0, the loop being S identical passes) and marked as such;
  - ours only: IW S = 1000 with bounded memory (chunked), with the peak RSS of a one-chunk run
    next to it.

and our jit compile times and peak memory (max RSS of each measuring process).

How it runs. Each side runs in child processes started one after the other, never at the
same time (our train, reference train, our evaluation, reference evaluation, our IW S = 1000),
so the two sides see the same machine state as closely as one can arrange. Our side runs with
this Python (jax); the reference side with the reference's own virtual environment, importing
the reference package from HVAE_OODD_DIR and the model builder and train-step timer of
../shared/bench/ref_torch_bench.py (which builds the model exactly as scripts/dvae_run.py and
stubs oodd.datasets, which needs torchvision). No reference code lives in this repository.

GPU. `--device gpu` runs our side on JAX's CUDA backend and the reference on `cuda` (the
model moved there with `.to`, every batch made where ref_torch_bench.py makes it and moved
after, the timers synchronising the device: the train step's `float(loss)` does, the
evaluation calls `torch.cuda.synchronize()`), one process at a time as on CPU, so each side has
the whole GPU. Eager PyTorch as the authors run it (dvae_run.py sets no cudnn.benchmark). Our
side also records the FLOPs of every compiled call from XLA's cost analysis (`flops`), from
which scripts/device/gpu_run.py derives TFLOP/s and model-FLOP utilisation.

Thread count. `--threads N` pins both sides' processes to the same N cores (sched_setaffinity,
as `taskset` would) when N is below the cores available; the reference additionally gets
`torch.set_num_threads(N)` and OMP/MKL_NUM_THREADS=N. XLA's CPU client sizes its thread pool
from the cores the process may run on, so the affinity mask is how JAX's thread count is set
(jaxlib has no intra-op thread-count flag). XLA_FLAGS is passed through and reported;
`--jax_devices D` adds --xla_force_host_platform_device_count=D (the train step then splits
the batch over D CPU devices, which share the same cores). JAX's persistent compilation cache
is switched off in the child, so compile times are cold compiles.

Setup of the reference (nothing of it is committed; `.ref/` and `.venv*/` are git-ignored):

  mkdir -p .ref/hvae-oodd && git -C <bare clone of JakobHavtorn/hvae-oodd> archive HEAD | tar -x -C .ref/hvae-oodd
  python3 -m venv .venv-ref && .venv-ref/bin/pip install torch==2.13.0 numpy tqdm rich pyyaml \
      matplotlib seaborn scikit-learn pandas       # the CPU build of torch; torchvision not needed

Options --ref_python, --ref_dir (or HVAE_OODD_DIR) and --ref_bench point elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "RESULT "
# Reference figures that the comparison states (shared/bench/ref_torch_results.md).
REF_PARAMS_DOC = 2_620_258
REF_UNUSED_TOP_Q = 31_360  # the reference's top-stage q projection, never used by its model

QUICK = dict(train_warmup=1, train_iters=2, eval_warmup=0, eval_iters=1, eval_batch=50,
             llr_batch=2, llr_iters=1, llr_s=[1, 10, 100], ref_max_s=10, iw_batch=2,
             iw_s=160)
FULL = dict(train_warmup=3, train_iters=20, eval_warmup=2, eval_iters=8, eval_batch=500,
            llr_batch=100, llr_iters=3, llr_s=[1, 10, 100], ref_max_s=100, iw_batch=20,
            iw_s=1000)


# ------------------------------------------------------------------------------------------
# Shared helpers (stdlib only: this file is also run by the reference's Python, without jax)
# ------------------------------------------------------------------------------------------
def time_calls(fn, warmup: int, iters: int) -> dict:
  """`warmup` untimed calls, then `iters` timed ones; `fn` must block until done."""
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return dict(median_s=statistics.median(ts), min_s=min(ts), max_s=max(ts), n=len(ts),
              warmup=warmup)


def with_rate(r: dict, batch: int) -> dict:
  r["batch"] = batch
  r["examples_per_s"] = batch / r["median_s"]
  return r


def max_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def llr_reps(s: int, a) -> tuple[int, int]:
  """(warm-up, timed) calls for S samples: one long call is enough past S = 10."""
  return (1, a.llr_iters) if s <= 10 else (0, 1)


def xla_flops(stage) -> float | None:
  """FLOPs of one call from XLA's cost analysis of a Lowered or Compiled stage (None if none)."""
  try:
    ca = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):  # older jax: one dict per device program
    ca = ca[0] if ca else None
  flops = (ca or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def load_ref_bench(path: str):
  """../shared/bench/ref_torch_bench.py as a module: imports torch and oodd (from
  HVAE_OODD_DIR) and stubs oodd.datasets. Run by the reference's Python only."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("ref_torch_bench", path)
  rb = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(rb)
  return rb


def add_reference_args(ap: argparse.ArgumentParser):
  """--ref_python, --ref_dir, --ref_bench: where the reference side's pieces are."""
  ap.add_argument("--ref_python", default=os.path.join(REPO, ".venv-ref", "bin", "python"))
  ap.add_argument("--ref_dir", default=os.environ.get("HVAE_OODD_DIR",
                                                      os.path.join(REPO, ".ref", "hvae-oodd")))
  ap.add_argument("--ref_bench", default=os.path.join(os.path.dirname(REPO), "shared", "bench",
                                                      "ref_torch_bench.py"))


def reference_env(a, threads: int) -> dict:
  """The reference child's environment; stops with the setup hint if a piece is missing."""
  missing = [p for p in (a.ref_python, a.ref_dir, a.ref_bench) if not os.path.exists(p)]
  if missing:
    raise SystemExit(f"reference side not set up: missing {missing}; see "
                     f"bench/compare_reference.py's docstring for the setup, or point "
                     f"--ref_python/--ref_dir/--ref_bench elsewhere.")
  return dict(os.environ, HVAE_OODD_DIR=os.path.abspath(a.ref_dir),
              OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def emit(res: dict):
  print(RESULT_TAG + json.dumps(res), flush=True)


def log(msg: str):
  print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Our side (run as a child: `--_role ours --_stage train|eval|iw`)
# ------------------------------------------------------------------------------------------
def ours_main(a):
  # Imported here: the parent and the reference child never import jax.
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  sys.path.insert(0, REPO)
  from bench.train_step import load_config  # pylint: disable=import-outside-toplevel
  from hvae_jax import (data, host_memory, image_keys, ood, preprocess, sharding,  # pylint: disable=import-outside-toplevel
                        trained, training)
  from hvae_jax.layers import count_params  # pylint: disable=import-outside-toplevel
  from hvae_jax.models import build_model  # pylint: disable=import-outside-toplevel

  c = load_config(os.path.join(REPO, a.config) if not os.path.isabs(a.config) else a.config,
                  a.set)
  spec = data.DATASETS[c.data.name]
  model = build_model(c, spec.image_shape)
  rng = np.random.default_rng(0)
  res = dict(stage=a._stage, jax=jax.__version__, devices=[str(d) for d in jax.devices()],
             device_kind=jax.devices()[0].device_kind,
             xla_flags=os.environ.get("XLA_FLAGS", ""), cpus=sorted(os.sched_getaffinity(0)),
             config=a.config, overrides=a.set, compile_s={}, flops={})

  def compile_fn(name, jitted, *args):
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
    res["compile_s"][name] = time.perf_counter() - t0
    res["flops"][name] = xla_flops(compiled) or xla_flops(lowered)
    try:  # XLA's own figure: the scratch buffer one call of this executable allocates
      res.setdefault("xla_temp_mb", {})[name] = compiled.memory_analysis().temp_size_in_bytes / 2**20
    except Exception:  # pylint: disable=broad-except
      pass
    log(f"[ours] compiled {name} in {res['compile_s'][name]:.1f}s")
    return compiled

  if a._stage == "train":
    b = a.train_batch
    batches = [rng.integers(0, 256, (b, *spec.image_shape), dtype=np.uint8) for _ in range(4)]
    state = training.init_state(model, c, preprocess.eval_input(batches[0], spec.kind, 0))
    res["n_params"] = count_params(state.params)
    mesh = sharding.make_data_mesh()
    state = jax.device_put(state, NamedSharding(mesh, P()))
    steps_per_epoch = -(-60000 // b)  # FashionMNIST train set
    step = training.make_data_parallel(
        training.make_train_step(model, c, steps_per_epoch, spec.kind), mesh)
    xbs = [sharding.global_batch(x, mesh) for x in batches]
    key = jax.random.key(1)
    res["rss_after_mb"] = {"init": max_rss_mb()}
    compiled = compile_fn("train_step", step, state, xbs[0], key)
    host_memory.release_freed()  # as training.compile_train_step does for train.py
    res["rss_after_mb"]["compile"] = max_rss_mb()
    box = {"state": state, "i": 0}

    def one_step():
      box["state"], m = compiled(box["state"], xbs[box["i"] % len(xbs)], key)
      box["i"] += 1
      jax.block_until_ready(m)
      box["loss"] = float(m["loss"])

    res["train"] = with_rate(time_calls(one_step, a.train_warmup, a.train_iters), b)
    res["train"]["last_loss"] = box["loss"]
    res["rss_after_mb"]["steps"] = max_rss_mb()
    log(f"[ours] train batch {b}: {res['train']['examples_per_s']:.1f} ex/s")
    res["max_rss_mb"] = max_rss_mb()
    return emit(res)

  n_x = max(a.eval_batch, a.llr_batch, a.iw_batch)
  pixels = rng.integers(0, 256, (n_x, *spec.image_shape), dtype=np.uint8)
  x_all = preprocess.eval_input(pixels, spec.kind, 0)
  key_data = image_keys.key_data(pixels, 0)
  ood_ks = tuple(range(1, ood.max_k(model) + 1))
  params = training.init_state(model, c, x_all[:128]).params
  res["n_params"] = count_params(params)
  key = jax.random.key(2)
  res["rss_after_mb"] = {"init": max_rss_mb()}

  def measure(name, jitted, x, warmup, iters, keys=key):
    x = jax.device_put(x)
    fn = compile_fn(name, jitted, params, x, keys)
    r = with_rate(time_calls(lambda: jax.block_until_ready(fn(params, x, keys)), warmup, iters),
                  x.shape[0])
    res[name] = r
    res["rss_after_mb"][name] = max_rss_mb()
    log(f"[ours] {name} batch {x.shape[0]}: {r['examples_per_s']:.2f} ex/s "
        f"(median {r['median_s']:.2f}s, max RSS so far {max_rss_mb():.0f} MB)")

  if a._stage == "eval":
    x = x_all[:a.eval_batch]
    measure("eval_elbo", training.make_eval_fn(model), x, a.eval_warmup, a.eval_iters)
    # What TrainedModel.score and evaluate.py run: each image alone with its own key, at most
    # max_passes image passes in flight.
    max_passes = trained.max_passes_for(a.max_passes)
    res["max_passes"] = max_passes
    image_fn = lambda s: ood.make_image_score_fn(model, ood_ks, s, s, a.chunk, max_passes,
                                                 jax.device_count())
    measure("all_k", image_fn(1), x, a.eval_warmup, a.eval_iters, key_data[:a.eval_batch])
    for s in a.llr_s:
      measure(f"llr_S{s}", image_fn(s), x_all[:a.llr_batch], *llr_reps(s, a),
              keys=key_data[:a.llr_batch])
  elif a._stage == "iw":
    x = x_all[:a.iw_batch]
    for s in (a.chunk, a.iw_s):  # one chunk, then many chunks: same peak memory
      fn = ood.make_score_fn(model, iw_samples_elbo=s, iw_samples_lk=s, chunk_size=a.chunk)
      measure(f"iw_S{s}", fn, x, 0, 1)
  res["max_rss_mb"] = max_rss_mb()
  emit(res)


# ------------------------------------------------------------------------------------------
# Reference side (run as a child with the reference venv's Python: `--_role ref`)
# ------------------------------------------------------------------------------------------
def ref_main(a):
  rb = load_ref_bench(a.ref_bench)
  torch, oodd = rb.torch, rb.oodd
  torch.set_num_threads(a.threads)
  dev = torch.device("cuda" if a.device == "gpu" else "cpu")
  res = dict(stage=a._stage, machine=rb.machine_info(), cpus=sorted(os.sched_getaffinity(0)),
             omp_num_threads=os.environ.get("OMP_NUM_THREADS"), hvae_oodd_dir=rb.REPO,
             device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
  oodd.utils.set_seed(1)
  gen = torch.Generator().manual_seed(1)
  model, margs = rb.build_model("fmnist")
  model.to(dev)
  make_batch = rb.make_batch  # CPU generator, as on CPU; bench_train draws through rb.make_batch
  rb.make_batch = lambda which, bs, g: make_batch(which, bs, g).to(dev)
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  res.update(n_params=rb.n_params(model), activation=margs.activation, n_latents=model.n_latents)

  if a._stage == "train":  # dvae_run.py's train() body, timed by ref_torch_bench.bench_train
    r = rb.bench_train(model, "fmnist", a.train_batch, a.train_warmup, a.train_iters, gen)
    res["train"] = dict(median_s=r["median_s"], min_s=r["min_s"], max_s=r["max_s"], n=r["n"],
                        warmup=a.train_warmup, batch=a.train_batch,
                        examples_per_s=r["examples_per_s"], last_loss=r["last_loss_per_example"])
    log(f"[ref] train batch {a.train_batch}: {r['examples_per_s']:.1f} ex/s")
    res["max_rss_mb"] = max_rss_mb()
    return emit(res)

  model.eval()
  criterion = oodd.losses.ELBO()
  ks = list(range(1, model.n_latents))  # every k a score uses: 1..L-1
  terms = [False] + [rb.get_decode_from_p(model.n_latents, k=k) for k in ks]

  def one_pass(x, dfp):  # ood-llr.py's per-sample body
    ld, sds = model(x, decode_from_p=dfp, use_mode=dfp)
    _, elbo, _, _ = rb.elbo_terms(criterion, ld, sds, samples=1, free_nats=0, beta=1,
                                  sample_reduction=None, batch_reduction=None)
    return elbo.detach()

  def scores(x, s, term_list):
    """S sequential passes per term, stacked and log-mean-exp'ed; LLR = ELBO - L^{>k}."""
    with torch.no_grad():
      bounds = [oodd.utils.log_sum_exp(torch.stack([one_pass(x, dfp) for _ in range(s)], 0),
                                       axis=0) for dfp in term_list]
      return bounds + [bounds[0] - b for b in bounds[1:]]

  def measure(name, x, s, term_list, warmup, iters):
    r = with_rate(time_calls(lambda: (scores(x, s, term_list), sync()), warmup, iters),
                  x.shape[0])
    r["passes_per_call"] = s * len(term_list)
    res[name] = r
    log(f"[ref] {name} batch {x.shape[0]}: {r['examples_per_s']:.2f} ex/s "
        f"(median {r['median_s']:.2f}s)")

  x = rb.make_batch("fmnist", a.eval_batch, gen)
  measure("eval_elbo", x, 1, terms[:1], a.eval_warmup, a.eval_iters)
  measure("all_k", x, 1, terms, a.eval_warmup, a.eval_iters)
  x = rb.make_batch("fmnist", a.llr_batch, gen)
  for s in a.llr_s:
    if s > a.ref_max_s:
      log(f"[ref] llr_S{s}: skipped (--ref_max_s {a.ref_max_s}), extrapolated")
      continue
    measure(f"llr_S{s}", x, s, terms, *llr_reps(s, a))
  res["max_rss_mb"] = max_rss_mb()
  emit(res)


# ------------------------------------------------------------------------------------------
# Parent: runs the children one after the other and prints the comparison
# ------------------------------------------------------------------------------------------
def busy_cores(seconds: float = 3.0) -> float:
  """Cores' worth of CPU time other work used over the last `seconds` (from /proc/stat).

  Unlike the 1-minute load average, this is not inflated by the previous child, which this
  script itself has just run. NaN when `seconds` <= 0 (not probed)."""
  if seconds <= 0:
    return float("nan")
  def snap():
    with open("/proc/stat", encoding="ascii") as f:
      v = [int(t) for t in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait
  try:
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
  except OSError:
    return float("nan")
  return (1.0 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1)


def child_args(a, role, stage) -> list[str]:
  keys = ["config", "threads", "train_batch", "train_warmup", "train_iters", "eval_batch",
          "eval_warmup", "eval_iters", "llr_batch", "llr_iters", "ref_max_s", "iw_batch",
          "iw_s", "chunk", "max_passes", "ref_bench", "device"]
  out = [os.path.abspath(__file__), "--_role", role, "--_stage", stage]
  for k in keys:
    out += [f"--{k}", str(getattr(a, k))]
  return out + ["--llr_s", *map(str, a.llr_s), "--set", *a.set]


def run_child(cmd, env, cpus, tag, busy_probe_s: float) -> dict:
  """Runs one measuring process pinned to `cpus`; streams its output; returns its RESULT."""
  busy0 = busy_cores(busy_probe_s)
  t0 = time.time()
  log(f"=== {tag} (busy cores before: {busy0:.2f}) ===")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=REPO, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
  result, tail = None, []
  for line in proc.stdout:
    if line.startswith(RESULT_TAG):
      result = json.loads(line[len(RESULT_TAG):])
    else:
      tail = (tail + [line])[-40:]
      sys.stderr.write(line)
  if proc.wait() != 0 or result is None:
    raise SystemExit(f"{tag} failed (exit {proc.returncode}); last output:\n{''.join(tail)}")
  result["wall_s"] = time.time() - t0
  result["busy_cores_before"] = busy0
  return result


def fmt_rate(r) -> str:
  return f"{r:10.2f}" if r is not None else f"{'-':>10}"


def report(a, ours: dict, ref: dict, settings: dict) -> str:
  rows = []  # (label, batch, ours ex/s, ref ex/s, ref note)

  def ref_rate(name):
    return ref.get(name, {}).get("examples_per_s") if ref else None

  rows.append(("train step (fwd+bwd+Adam)", a.train_batch,
               ours["train"]["examples_per_s"], ref_rate("train"), ""))
  rows.append(("eval ELBO, 1 sample", a.eval_batch, ours["eval_elbo"]["examples_per_s"],
               ref_rate("eval_elbo"), ""))
  rows.append(("all-k: ELBO + L>1 + L>2, S=1", a.eval_batch, ours["all_k"]["examples_per_s"],
               ref_rate("all_k"), ""))
  extrapolated = []
  for s in a.llr_s:
    r_ref, note = ref_rate(f"llr_S{s}"), ""
    if ref and r_ref is None:
      measured = [t for t in a.llr_s if f"llr_S{t}" in ref]
      if measured:
        s0 = max(measured)
        t = ref[f"llr_S{s0}"]["median_s"] * s / s0
        r_ref, note = a.llr_batch / t, "*"
        extrapolated.append(f"reference LLR S={s}: not run (--ref_max_s {a.ref_max_s}); "
                            f"extrapolated as {s / s0:g} x its S={s0} time "
                            f"({ref[f'llr_S{s0}']['median_s']:.2f}s) = {t:.1f}s per batch")
    rows.append((f"LLR all k, S={s}", a.llr_batch, ours[f"llr_S{s}"]["examples_per_s"],
                 r_ref, note))
  if f"iw_S{a.iw_s}" in ours:
    rows.append((f"IW all k, S={a.iw_s} (ours only)", a.iw_batch,
                 ours[f"iw_S{a.iw_s}"]["examples_per_s"], None, ""))

  out = []
  out.append("Settings: " + json.dumps(settings))
  info = ours.get("info", {})
  out.append(f"Ours: jax {info.get('jax')} on {info.get('devices')}, cores {info.get('cpus')}, "
             f"XLA_FLAGS '{info.get('xla_flags', '')}'")
  if ref:
    m = ref["info"]["machine"]
    out.append(f"Reference: torch {m['torch']} ({m['cpu_capability']}), "
               f"torch.set_num_threads({m['torch_threads']}), OMP/MKL_NUM_THREADS "
               f"{ref['info']['omp_num_threads']}, cores {ref['info']['cpus']}, CPU '{m['cpu']}', "
               f"device {ref['info']['device']}")
  ref_n = ref["n_params"] if ref else REF_PARAMS_DOC
  out.append(f"Parameters: ours {ours['n_params']:,}; reference {ref_n:,}"
             + ("" if ref else " (documented, reference not run)"))
  out.append(f"  difference {ref_n - ours['n_params']:,} (the reference's unused top "
             f"q-projection is {REF_UNUSED_TOP_Q:,})")
  out.append("")
  out.append(f"{'measure':<34} {'batch':>5} {'ours ex/s':>10} {'ref ex/s':>10} {'ours/ref':>9}")
  out.append("-" * 72)
  for label, b, o, r, note in rows:
    ratio = f"{o / r:8.2f}x" if (o and r) else f"{'-':>9}"
    out.append(f"{label:<34} {b:>5} {fmt_rate(o)} {fmt_rate(r)}{note or ' '}{ratio}")
  out.append("")
  for e in extrapolated:
    out.append("* " + e)
  out.append("Reference all-k and LLR rows: one ELBO pass term + one term per k (k = 1, 2), "
             "S sequential passes per term,")
  out.append("  as ood-llr.py's loops; ood-llr.py run once per k would redo the ELBO term "
             "(4 terms instead of 3).")
  out.append("")
  out.append("Our jit compile times (lower + compile, cold; s): " + ", ".join(
      f"{k} {v:.1f}" for k, v in ours["compile_s"].items()))
  if ours.get("flops"):
    out.append("XLA FLOPs per call (cost analysis; GFLOP): " + ", ".join(
        f"{k} {v / 1e9:.1f}" for k, v in ours["flops"].items() if v))
  if ours.get("xla_temp_mb"):
    out.append("XLA temp buffer per call (compiled.memory_analysis(); MB): " + ", ".join(
        f"{k} {v:.0f}" for k, v in ours["xla_temp_mb"].items()))
  out.append("Peak memory, max RSS of each measuring process (MB): " + ", ".join(
      f"ours {s} {ours['rss'][s]:.0f}" for s in ours["rss"]) + (
      ", " + ", ".join(f"ref {s} {ref['rss'][s]:.0f}" for s in ref["rss"]) if ref else ""))
  if "iw_rss_after_mb" in ours:
    r = ours["iw_rss_after_mb"]
    out.append(f"  IW process (batch {a.iw_batch}, chunk {a.chunk}): max RSS after init "
               f"{r['init']:.0f}, after S={a.chunk} (one chunk) {r[f'iw_S{a.chunk}']:.0f}, "
               f"after S={a.iw_s} {r[f'iw_S{a.iw_s}']:.0f}")
  if "train_rss_after_mb" in ours:
    out.append("  train process, max RSS after each phase: " + ", ".join(
        f"{k} {v:.0f}" for k, v in ours["train_rss_after_mb"].items()))
  if "eval_rss_after_mb" in ours:
    out.append("  eval process, max RSS after each measure: " + ", ".join(
        f"{k} {v:.0f}" for k, v in ours["eval_rss_after_mb"].items()))
  busy = ", ".join(f"{k} {v:.2f}" for k, v in settings["busy_cores_before"].items())
  out.append(f"busy cores in the 3 s before each process: {busy}")
  if max(settings["busy_cores_before"].values()) > 0.3:
    out.append("WARNING: other work used > 0.3 cores before a measurement; it shares the "
               "cores, so these timings are not clean.")
  return "\n".join(out)


def parent_main(a):
  cpus_all = sorted(os.sched_getaffinity(0))
  if a.threads > len(cpus_all):
    log(f"warning: --threads {a.threads} > {len(cpus_all)} cores available; using all of them")
  cpus = cpus_all[:a.threads] if a.threads < len(cpus_all) else cpus_all
  threads = min(a.threads, len(cpus_all))
  a.threads = threads

  xla_flags = " ".join(f for f in [os.environ.get("XLA_FLAGS", ""), a.xla_flags] if f).strip()
  if a.jax_devices > 1:
    xla_flags += f" --xla_force_host_platform_device_count={a.jax_devices}"
  ours_env = dict(os.environ, XLA_FLAGS=xla_flags.strip(),
                  JAX_PLATFORMS="cuda" if a.device == "gpu" else "cpu")
  for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    ours_env.pop(k, None)
  ref_env = None if a.skip_ref else reference_env(a, threads)

  settings = dict(device=a.device, overrides=a.set, cpus=cpus, threads=threads, xla_flags=ours_env["XLA_FLAGS"],
                  jax_devices=a.jax_devices, torch_threads=threads,
                  omp_mkl_num_threads=threads, quick=a.quick, python=platform.python_version(),
                  machine=platform.machine(), busy_cores_before={})
  t_start = time.time()
  ours, ref = {}, {}
  ours_rss, ref_rss = {}, {}

  def ours_stage(stage):
    r = run_child([sys.executable] + child_args(a, "ours", stage), ours_env, cpus,
                  f"ours: {stage}", a.busy_probe_s)
    settings["busy_cores_before"][f"ours_{stage}"] = r["busy_cores_before"]
    ours_rss[stage] = r["max_rss_mb"]
    ours.setdefault("compile_s", {}).update(r["compile_s"])
    ours.setdefault("flops", {}).update(r["flops"])
    ours.setdefault("xla_temp_mb", {}).update(r.get("xla_temp_mb", {}))
    ours["n_params"] = r["n_params"]
    ours.setdefault("info", dict(jax=r["jax"], devices=r["devices"],
                                 device_kind=r["device_kind"], xla_flags=r["xla_flags"],
                                 cpus=r["cpus"]))
    for k, v in r.items():
      if isinstance(v, dict) and "examples_per_s" in v:
        ours[k] = v
    if "rss_after_mb" in r:
      ours[f"{stage}_rss_after_mb"] = r["rss_after_mb"]

  def ref_stage(stage):
    if a.skip_ref or "reference_error" in settings:
      return
    try:
      r = run_child([a.ref_python] + child_args(a, "ref", stage), ref_env, cpus,
                    f"reference: {stage}", a.busy_probe_s)
    except SystemExit as e:  # keep our side's figures; the report says what failed
      settings["reference_error"] = str(e).splitlines()[0]
      log(f"reference side stopped: {settings['reference_error']}")
      return
    settings["busy_cores_before"][f"ref_{stage}"] = r["busy_cores_before"]
    ref_rss[stage] = r["max_rss_mb"]
    ref["n_params"] = r["n_params"]
    ref.setdefault("info", dict(machine=r["machine"], cpus=r["cpus"], device=r["device"],
                                omp_num_threads=r["omp_num_threads"],
                                hvae_oodd_dir=r["hvae_oodd_dir"], activation=r["activation"]))
    for k, v in r.items():
      if isinstance(v, dict) and "examples_per_s" in v:
        ref[k] = v

  # Alternate sides so slow drifts in background load hit both alike.
  ours_stage("train")
  ref_stage("train")
  ours_stage("eval")
  ref_stage("eval")
  if not a.skip_iw:
    ours_stage("iw")
  ours["rss"] = ours_rss
  if ref:
    ref["rss"] = ref_rss
  settings["total_wall_s"] = time.time() - t_start
  text = report(a, ours, ref or None, settings)
  print(text, flush=True)
  print(f"(total wall time {settings['total_wall_s'] / 60:.1f} min)")
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      json.dump(dict(settings=settings, ours=ours, reference=ref or None,
                     args={k: v for k, v in vars(a).items() if not k.startswith("_")},
                     table=text), f, indent=1)
    print(f"wrote {a.out}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--threads", type=int, default=2, help="cores for both sides (default 2)")
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: 1+2 train steps, tiny eval/LLR batches, reference S<=10, "
                  "our bounded-memory IW run with S=160")
  ap.add_argument("--skip_ref", action="store_true", help="our side only")
  ap.add_argument("--skip_iw", action="store_true", help="skip our IW S=1000 run")
  ap.add_argument("--out", default="", help="write all results as JSON here")
  ap.add_argument("--config", default="configs/fmnist_hvae.py",
                  help="our config; must be the reference's FashionMNIST architecture")
  ap.add_argument("--train_batch", type=int, default=128)
  ap.add_argument("--train_warmup", type=int)
  ap.add_argument("--train_iters", type=int)
  ap.add_argument("--eval_batch", type=int, help="ELBO and all-k batch (default 500)")
  ap.add_argument("--eval_warmup", type=int)
  ap.add_argument("--eval_iters", type=int)
  ap.add_argument("--llr_batch", type=int, help="batch of the LLR S runs (default 100)")
  ap.add_argument("--llr_s", type=int, nargs="*",
                  help="sample counts (default 1 10 100; none: no LLR rows)")
  ap.add_argument("--llr_iters", type=int, help="timed calls for S<=10 (1 call past that)")
  ap.add_argument("--ref_max_s", type=int,
                  help="largest S the reference runs; larger S are extrapolated (default 100)")
  ap.add_argument("--iw_batch", type=int, help="batch of our IW S=1000 run (default 20)")
  ap.add_argument("--iw_s", type=int, help="samples of our bounded-memory IW run (default 1000)")
  ap.add_argument("--chunk", type=int, default=16, help="our IW chunk size (samples vmapped)")
  ap.add_argument("--max_passes", type=int, default=0,
                  help="our image passes in flight while scoring, as config.eval.max_passes "
                       "(0 = automatic: 256 on CPU; -1 = no bound)")
  ap.add_argument("--jax_devices", type=int, default=1,
                  help="CPU devices for JAX (xla_force_host_platform_device_count)")
  ap.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for our side")
  ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                  help="where both sides run: CPU, or JAX's CUDA backend and torch's cuda")
  ap.add_argument("--set", nargs="*", default=[],
                  help="our config overrides key=value, e.g. model.dtype=bfloat16")
  ap.add_argument("--busy_probe_s", type=float, default=3.0,
                  help="seconds of /proc/stat sampling before each process (0: no probe)")
  add_reference_args(ap)
  ap.add_argument("--_role", default="parent", choices=["parent", "ours", "ref"],
                  help=argparse.SUPPRESS)
  ap.add_argument("--_stage", default="", help=argparse.SUPPRESS)
  a = ap.parse_args()
  for k, v in (QUICK if a.quick else FULL).items():
    if getattr(a, k) is None:
      setattr(a, k, v)
  a.ref_bench = os.path.abspath(a.ref_bench)
  if a._role == "ours":
    ours_main(a)
  elif a._role == "ref":
    ref_main(a)
  else:
    parent_main(a)


if __name__ == "__main__":
  main()
