"""A ported hvae-oodd HVAE computes what the reference computes: per-image differences in nats.

  python bench/reference_equivalence.py --ref_commit=<hvae-oodd commit> \
      --out=bench/results/reference_equivalence_<date>.txt
  python bench/reference_equivalence.py --reference_model=models/FashionMNISTBinarized-<time>

Reference side (a child process with the reference's Python, set up as bench/compare_reference.py
says; the model from ../shared/bench/ref_torch_bench.py's builder, i.e. scripts/dvae_run.py's
FashionMNIST HVAE): seeded build, the data-dependent init its first forward pass runs (on a
batch of real training images), --train_steps Adam steps on the ELBO (lr 3e-4, dynamically
binarized FashionMNIST train images), so that posteriors and priors differ as in a trained
model, then `model.save(dir)`: the checkpoint files dvae_run.py writes. With
--reference_model it takes that hvae-oodd model directory instead (e.g. one dvae_run.py trained).

Our side converts that directory with `hvae_jax.port.convert` (what `python -m hvae_jax.port`
runs) and loads the result with `hvae_jax.load_model`, as a user would.

Both then score the same --n FashionMNIST test images, binarized once with our
`data.eval_binarize` (identical {0, 1} inputs), deterministically, with every latent at its
mean: the reference with `use_mode=True` (posterior means in the bottom-up pass and as the
posterior z, prior means for skipped layers) and ood-llr.py's `decode_from_p` for k; ours with
key=None. Per k = 0 (ELBO), 1, 2 (L^{>k}) and image: log p(x|z), each layer's KL term
log q(z_i|.) - log p(z_i|.) (0 for a skipped layer) and the bound.

The report gives the max over images of |ours - reference| per quantity (A, both float32), and,
to tell rounding from a real difference, the same for the reference run in float64 (the same
model `.double()`): |reference float32 - float64| (B, the reference's own rounding) and
|ours - reference float64| (C). It passes when A is within --tolerance nats, or when in every
cell C <= max(B, --tolerance) (ours is as close to the exact result as the reference's float32
is); exit status 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.compare_reference import (REPO, add_reference_args, emit, load_ref_bench,  # pylint: disable=wrong-import-position
                                     log, reference_env, run_child)

KS = (0, 1, 2)


# ------------------------------------------------------------------------------------------
# Reference side (the reference venv's Python: `--_role ref`); torch and numpy only
# ------------------------------------------------------------------------------------------
def ref_train(a, rb, model):
  """--train_steps Adam steps on the ELBO (step 0 runs the data-dependent init only)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  torch = rb.torch
  gen = torch.Generator().manual_seed(a.seed)
  train = torch.from_numpy(np.load(os.path.join(a.work_dir, "inputs.npz"))["train"])
  train = train.float().div(255).unsqueeze(1)  # [N, 1, 28, 28]
  criterion = rb.oodd.losses.ELBO()
  optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
  model.train()
  losses = []
  for step in range(a.train_steps + 1):
    idx = torch.randint(0, len(train), (a.batch,), generator=gen)
    ld, sds = model(torch.bernoulli(train[idx], generator=gen))
    loss, _, _, _ = rb.elbo_terms(criterion, ld, sds, samples=1, free_nats=0, beta=1,
                                  sample_reduction=torch.mean, batch_reduction=None)
    if step:
      loss.mean().backward()
      optimizer.step()
      optimizer.zero_grad()
      losses.append(loss.mean().item())
    if step % 50 == 0:
      log(f"[ref] step {step}: -ELBO {loss.mean().item():.1f} nats")
  model.eval()
  return losses


def ref_scores(rb, model, x, eval_batch: int) -> dict:
  """Per-image log p(x|z), KL per layer and bound for every k, every latent at its mean."""
  torch = rb.torch
  criterion = rb.oodd.losses.ELBO()
  out = {}
  with torch.no_grad():
    for k in KS:
      dfp = rb.get_decode_from_p(model.n_latents, k=k)
      log_px, kls, bounds = [], [], []
      for xb in x.split(eval_batch):
        ld, sds = model(xb, use_mode=True, decode_from_p=dfp)
        _, bound, _, _ = rb.elbo_terms(criterion, ld, sds, samples=1, free_nats=0, beta=1,
                                       sample_reduction=None, batch_reduction=None)
        log_px.append(ld.likelihood)
        kls.append(torch.stack([
            torch.zeros(len(xb), dtype=x.dtype) if sd.loss.kl_elementwise is None
            else sd.loss.kl_elementwise.flatten(1).sum(1) for sd in sds], 1))
        bounds.append(bound)
      out.update({f"log_px_k{k}": torch.cat(log_px).numpy(), f"kl_k{k}": torch.cat(kls).numpy(),
                  f"bound_k{k}": torch.cat(bounds).numpy()})
  return out


def ref_main(a):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rb = load_ref_bench(a.ref_bench)
  torch, oodd = rb.torch, rb.oodd
  torch.set_num_threads(a.threads)
  oodd.utils.set_seed(a.seed)
  saved = os.path.join(a.work_dir, "reference_model")
  if a.reference_model:
    model, losses = oodd.models.load_model(a.reference_model), []
    model.eval()
  else:
    model, _ = rb.build_model("fmnist")
    losses = ref_train(a, rb, model)
    model.save(saved)
  x = torch.from_numpy(np.load(os.path.join(a.work_dir, "inputs.npz"))["test"])
  x = x.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
  out = {f"f32_{k}": v for k, v in ref_scores(rb, model, x, a.eval_batch).items()}
  # The same model in float64: how far the reference's own float32 result is from exact.
  out.update({f"f64_{k}": v for k, v in ref_scores(rb, model.double(), x.double(),
                                                    a.eval_batch).items()})
  np.savez(os.path.join(a.work_dir, "reference_scores.npz"), **out)
  emit(dict(torch=torch.__version__, n_params=rb.n_params(model), last_train_losses=losses[-5:],
            machine=rb.machine_info(), hvae_oodd_dir=rb.REPO,
            model_dir=a.reference_model or saved))


# ------------------------------------------------------------------------------------------
# Our side and the report (this Python)
# ------------------------------------------------------------------------------------------
def ours_scores(model_dir: str, x):
  """Our per-image terms with every latent at its mean (key=None), as the reference's."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from hvae_jax import api, objectives  # pylint: disable=import-outside-toplevel
  m = api.load_model(model_dir)
  fn = jax.jit(lambda xb, k: m.model.apply({"params": m.params}, xb, None, k))
  out = {}
  for k in KS:
    res = [fn(x[i:i + 500], k) for i in range(0, len(x), 500)]
    out[f"log_px_k{k}"] = np.concatenate([np.asarray(r.log_px) for r in res])
    out[f"kl_k{k}"] = np.concatenate([np.asarray(objectives.kl_per_latent(r)) for r in res])
    out[f"bound_k{k}"] = np.concatenate([np.asarray(objectives.bound(r)) for r in res])
  return out, m


QUANTITIES = ("log_px", "kl", "bound")


def diff_table(a: dict, b: dict, n_layers: int) -> tuple[list[str], dict]:
  """Rows of max |a - b| over images per quantity and k (mean |b| in brackets), and those
  maxima by (quantity, k)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rows, cells = [], {}
  names = [("log p(x|z)", "log_px", None)] + [(f"KL z{i + 1}", "kl", i) for i in range(n_layers)]
  names.append(("bound (ELBO, L^{>k})", "bound", None))
  for label, key, col in names:
    row = []
    for k in KS:
      x, y = (np.asarray(d[f"{key}_k{k}"], np.float64) for d in (a, b))
      if col is not None:
        x, y = x[:, col], y[:, col]
      cells[label, k] = float(np.max(np.abs(x - y)))
      row.append(f"{cells[label, k]:9.2e} ({float(np.mean(np.abs(y))):8.2f})")
    rows.append(f"{label:<22}" + "".join(f"  {c:>20}" for c in row))
  header = f"{'quantity':<22}" + "".join(
      f"  {f'k={k}' + (' (ELBO)' if k == 0 else ''):>20}" for k in KS)
  return [header] + rows, cells


def report(a, ours: dict, ref: dict, info: dict, n_params: int) -> tuple[str, float]:
  ref32 = {k[4:]: v for k, v in ref.items() if k.startswith("f32_")}
  ref64 = {k[4:]: v for k, v in ref.items() if k.startswith("f64_")}
  n_layers = ref32["kl_k0"].shape[1]
  main, a_cells = diff_table(ours, ref32, n_layers)
  own, b_cells = diff_table(ref32, ref64, n_layers)
  exact, c_cells = diff_table(ours, ref64, n_layers)
  worst = max(a_cells.values())
  # Rounding, cell by cell: ours as close to the float64 result as the reference's float32.
  rounding = all(c_cells[c] <= max(b_cells[c], a.tolerance) for c in c_cells)
  trained = (f"trained {a.train_steps} Adam steps (lr 3e-4, batch {a.batch}, plain ELBO) from "
             f"its data-dependent init; last -ELBOs "
             f"{[round(v, 1) for v in info['last_train_losses']]}"
             if not a.reference_model else f"loaded from {a.reference_model}")
  lines = [
      f"Reference equivalence, {datetime.date.today().isoformat()}, {platform.node()} "
      f"({info['machine']['cpu']}), CPU",
      f"Command: {a.command}",
      f"Reference: hvae-oodd commit {a.ref_commit} ({info['hvae_oodd_dir']}), torch "
      f"{info['torch']}, built by ../shared/bench/ref_torch_bench.py (dvae_run.py's FashionMNIST "
      f"HVAE), {info['n_params']:,} parameters; {trained}",
      f"Ours: that checkpoint ({info['model_dir']}) converted by hvae_jax.port.convert, loaded "
      f"with hvae_jax.load_model: {n_params:,} parameters (the reference's top q-projection is "
      f"unused by its model)",
      f"Inputs: {a.n} FashionMNIST test images, data.eval_binarize(seed 0), identical on both "
      f"sides; every latent at its mean (reference use_mode=True, ours key=None)",
      "",
      "A. ours vs reference, both float32: max |ours - reference| over images, nats per image "
      "(mean |reference| in brackets)",
  ] + main + [
      "",
      "B. the reference's own float32 rounding: max |reference float32 - reference float64| "
      "(the same model and inputs, .double())",
  ] + own + [
      "",
      "C. ours (float32) vs reference float64: max |ours - reference float64|",
  ] + exact + [
      "",
      f"A: largest difference {worst:.2e} nats per image (tolerance {a.tolerance:g}); "
      f"B: the reference's own float32 error, largest {max(b_cells.values()):.2e}; C: ours, "
      f"largest {max(c_cells.values()):.2e}.",
      "PASS: within the tolerance" if worst <= a.tolerance else
      "PASS: A is float32 rounding: in every cell, C <= max(B, tolerance), i.e. ours is no "
      "farther from the float64 result than the reference's own float32 result" if rounding
      else "FAIL: ours is farther from the float64 result than the reference's float32 result",
  ]
  return "\n".join(lines), worst <= a.tolerance or rounding


def parent_main(a):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from bench.train_step import load_config  # pylint: disable=import-outside-toplevel
  from hvae_jax import data, port  # pylint: disable=import-outside-toplevel
  from hvae_jax.layers import count_params  # pylint: disable=import-outside-toplevel
  cpus = sorted(os.sched_getaffinity(0))
  env = reference_env(a, len(cpus))
  test = data.load_images("fashion_mnist", "test", a.data_dir or None)
  x = data.eval_binarize(test[np.random.default_rng(a.seed).permutation(len(test))[:a.n]], 0)
  train = data.load_images("fashion_mnist", "train", a.data_dir or None)[..., 0]
  with tempfile.TemporaryDirectory() as tmp:
    a.work_dir = a.work_dir or tmp
    os.makedirs(a.work_dir, exist_ok=True)
    np.savez(os.path.join(a.work_dir, "inputs.npz"), test=x, train=train)
    cmd = [a.ref_python, os.path.abspath(__file__), "--_role", "ref"] + [
        f"--{k}={getattr(a, k)}" for k in ("work_dir", "ref_bench", "seed", "train_steps",
                                            "batch", "eval_batch", "reference_model")]
    info = run_child(cmd + [f"--threads={len(cpus)}"], env, cpus, "reference: scores",
                     busy_probe_s=3.0)
    ref = dict(np.load(os.path.join(a.work_dir, "reference_scores.npz")))
    config = load_config(os.path.join(REPO, "configs", "fmnist_hvae.py"), [])
    ported = port.convert(info["model_dir"], config, os.path.join(tmp, "ported"))
    ours, m = ours_scores(ported, x)
    text, passed = report(a, ours, ref, info, count_params(m.params))
  print(text)
  if a.out:
    with open(a.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
    print(f"wrote {a.out}")
  if not passed:
    raise SystemExit(1)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--n", type=int, default=1000, help="test images compared")
  ap.add_argument("--train_steps", type=int, default=200, help="reference Adam steps")
  ap.add_argument("--batch", type=int, default=64, help="reference training batch")
  ap.add_argument("--eval_batch", type=int, default=500)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tolerance", type=float, default=1e-3, help="nats per image")
  ap.add_argument("--ref_commit", default="unknown", help="the reference checkout's commit "
                  "(recorded in the report)")
  ap.add_argument("--data_dir", default="", help="default: $HVAE_DATA_DIR")
  ap.add_argument("--out", default="", help="write the report here")
  ap.add_argument("--reference_model", default="", help="an hvae-oodd model directory (e.g. "
                  "dvae_run.py's) to compare instead of building and training one")
  ap.add_argument("--work_dir", default="", help="keep the inputs, the reference model and its "
                  "scores here (default: a temporary folder)")
  ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
  ap.add_argument("--_role", default="parent", choices=["parent", "ref"], help=argparse.SUPPRESS)
  add_reference_args(ap)
  a = ap.parse_args()
  a.ref_bench = os.path.abspath(a.ref_bench)
  a.command = "python " + " ".join(json.dumps(v) if " " in v else v for v in sys.argv)
  if a._role == "ref":
    ref_main(a)
  else:
    parent_main(a)


if __name__ == "__main__":
  main()
