"""A ported hvae-oodd model computes what the reference computes: per-image differences in nats.

  python bench/reference_equivalence.py --ref_commit=<hvae-oodd commit> \
      --out=bench/results/reference_equivalence_<date>.txt                 # FashionMNIST HVAE
  python bench/reference_equivalence.py --config=configs/cifar_hvae.py --n=200 --train_steps=300
  python bench/reference_equivalence.py --config=configs/cifar_biva.py --set='model.blocks=...'
  python bench/reference_equivalence.py --reference_model=models/FashionMNISTBinarized-<time>

--config picks the model (default configs/fmnist_hvae.py), --set key=value changes it (Python
literals, e.g. smaller widths). Reference side (a child process with the reference's Python,
set up as bench/compare_reference.py says; bench/reference_model.py): the model hvae-oodd's
scripts/dvae_run.py builds for that config (class VAE or BIVA, the config's blocks and
latents as README-style JSON), seeded, the data-dependent init its first forward pass runs
(on a batch of training images), --train_steps Adam steps on the ELBO (--train_lr) so that weight
norm, posteriors, priors and the mixture are away from their initial values, then
`model.save(dir)`: the checkpoint files dvae_run.py writes. With --reference_model it takes
that hvae-oodd model directory instead (e.g. one dvae_run.py trained).

Images: for the FashionMNIST models --n test images binarized once with our
`preprocess.eval_binarize` (training: dynamically binarized train images); for colour models 32x32
patches of the two photographs scikit-learn ships (`load_sample_images`: china.jpg,
flower.jpg), cut on a grid, shuffled (seeded) into --n test patches and training patches
(the rest, and their mirror images): uint8 for ours, k / 255 for the reference (its
CIFAR10Quantized ToTensor), identical values.

Our side converts that directory with `hvae_jax.port.convert` (what `python -m hvae_jax.port`
runs) and loads the result with `hvae_jax.load_model`, as a user would. Both then score the
same images deterministically, with every latent at its mean: the reference with
`use_mode=True` (posterior means in the bottom-up pass and as the posterior z, prior means for
skipped layers) and ood-llr.py's `decode_from_p` for k; ours with key=None. Per k = 0 (ELBO)
.. L-1 (L^{>k}, k counting layers: both BIVA latents of a layer) and image: log p(x|z), each
latent's KL term log q(z|.) - log p(z|.) (0 where it comes from the prior) and the bound.

The report gives the max over images of |ours - reference| per quantity (A, both float32), and,
to tell rounding from a real difference, the same for the reference run in float64 (the same
model `.double()`): |reference float32 - float64| (B, the reference's own rounding) and
|ours - reference float64| (C). It passes when A is within --tolerance nats, or when in every
cell C <= max(B, --tolerance) (ours is as close to the exact result as the reference's float32
is), or, with --rel_tolerance r, when every cell that misses that has C <= r x its largest
|value| (the test's rule: a max over images of float32 accumulation noise is as likely to land
just above the reference's own as below it); exit status 1 otherwise.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.compare_reference import (REPO, add_reference_args, emit, log,  # pylint: disable=wrong-import-position
                                     reference_env, run_child)

QUANTITIES = ("log_px", "kl", "bound")


# ------------------------------------------------------------------------------------------
# Reference side (the reference venv's Python: `--_role ref`); torch and numpy only
# ------------------------------------------------------------------------------------------
def ref_main(a):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from bench import reference_model as rm  # pylint: disable=import-outside-toplevel
  torch, oodd = rm.import_oodd()
  torch.set_num_threads(a.threads)
  oodd.utils.set_seed(a.seed)
  with open(os.path.join(a.work_dir, "spec.json"), encoding="utf-8") as f:
    spec = json.load(f)
  inputs = np.load(os.path.join(a.work_dir, "inputs.npz"))
  dmol = spec["likelihood"] == rm.LIKELIHOOD_MODULES["dmol"]
  saved = os.path.join(a.work_dir, "reference_model")
  if a.reference_model:
    model, losses = oodd.models.load_model(a.reference_model), []
    model.eval()
  else:
    model = rm.build(spec)
    train = rm.as_input(inputs["train"], dmol)
    if not dmol:  # dynamic binarization of the grey levels, as dvae_run.py's training data
      train = torch.bernoulli(train / 255, generator=torch.Generator().manual_seed(a.seed))
    losses = rm.train(model, train, a.train_steps, a.batch, a.seed, lr=a.train_lr, log=log)
    model.save(saved)
  out = rm.scores_f32_f64(model, rm.as_input(inputs["test"], dmol), a.eval_batch)
  np.savez(os.path.join(a.work_dir, "reference_scores.npz"), **out)
  emit(dict(torch=torch.__version__, n_params=rm.n_params(model), last_train_losses=losses[-5:],
            cpu=platform.processor(), model_dir=a.reference_model or saved))


# ------------------------------------------------------------------------------------------
# Our side and the report (this Python)
# ------------------------------------------------------------------------------------------
def colour_patches(n_test: int, seed: int):
  """(train, test) uint8 `[N, 32, 32, 3]` patches of scikit-learn's two sample photographs:
  a 32-pixel grid of each, shuffled; the first `n_test` are the test set, the rest and their
  mirror images the training set."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  patches = []
  for img in load_sample_images().images:
    h, w = img.shape[0] // 32 * 32, img.shape[1] // 32 * 32
    grid = img[:h, :w].reshape(h // 32, 32, w // 32, 32, 3).transpose(0, 2, 1, 3, 4)
    patches.append(grid.reshape(-1, 32, 32, 3))
  patches = np.concatenate(patches)[np.random.default_rng(seed).permutation(520)]
  if not 0 < n_test < len(patches) // 2:
    raise SystemExit(f"--n must be in 1..{len(patches) // 2 - 1} for the photograph patches.")
  train = patches[n_test:]
  return np.concatenate([train, train[:, :, ::-1]]), patches[:n_test]


def images(config, a):
  """(train, test) images in our format for `config`'s data."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from hvae_jax import data, preprocess  # pylint: disable=import-outside-toplevel
  if config.model.likelihood == "dmol":
    return colour_patches(a.n, a.seed)
  test = data.load_images(config.data.name, "test", a.data_dir or None)
  x = preprocess.eval_binarize(test[np.random.default_rng(a.seed).permutation(len(test))[:a.n]], 0)
  return data.load_images(config.data.name, "train", a.data_dir or None), x


def ours_scores(model, params, x, ks, batch: int = 500, compiler_options=None) -> dict:
  """Our per-image terms with every latent at its mean (key=None), as `reference_model.scores`:
  log_px_k `[N]`, kl_k `[N, n_latents]`, bound_k `[N]` for each k in `ks`. `compiler_options`
  go to XLA (tests pass a low optimisation level: faster compiles)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from hvae_jax import objectives  # pylint: disable=import-outside-toplevel
  apply = jax.jit(lambda xb, k: model.apply({"params": params}, xb, None, k))
  compiled = {}

  def fn(xb, k):  # k traced: one compile per batch shape serves every k
    if xb.shape not in compiled:
      compiled[xb.shape] = apply.lower(xb, k).compile(compiler_options)
    return compiled[xb.shape](xb, k)

  out = {}
  for k in ks:
    res = [fn(x[i:i + batch], np.int32(k)) for i in range(0, len(x), batch)]
    out[f"log_px_k{k}"] = np.concatenate([np.asarray(r.log_px) for r in res])
    out[f"kl_k{k}"] = np.concatenate([np.asarray(objectives.kl_per_latent(r)) for r in res])
    out[f"bound_k{k}"] = np.concatenate([np.asarray(objectives.bound(r)) for r in res])
  return out


def max_diffs(a: dict, b: dict) -> dict:
  """Max over images of |a - b| per (quantity, column, k): column None, or the latent."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  return {cell: float(np.max(d)) for cell, d in _cells(
      {key: np.abs(np.asarray(a[key], np.float64) - np.asarray(b[key], np.float64))
       for key in a}).items()}


def _cells(arrays: dict) -> dict:
  """`{(quantity, column, k): [N] array}` from {'<quantity>_k<k>': [N] or [N, columns]}."""
  cells = {}
  for key, v in arrays.items():
    quantity, k = key.rsplit("_k", 1)
    for col in ([None] if v.ndim == 1 else range(v.shape[1])):
      cells[quantity, col, int(k)] = v if col is None else v[:, col]
  return cells


def rounding_only(ours: dict, ref: dict, tolerance: float, rel_tolerance: float = 0.0) -> bool:
  """True when in every cell ours is as close to the reference's float64 result as its own
  float32 result is, or within `tolerance` nats or `rel_tolerance` times the cell's largest
  |value|: C <= max(B, tolerance, rel_tolerance * max |f64|)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  ref32 = {k[4:]: v for k, v in ref.items() if k.startswith("f32_")}
  ref64 = {k[4:]: v for k, v in ref.items() if k.startswith("f64_")}
  own, exact = max_diffs(ref32, ref64), max_diffs(ours, ref64)
  scale = {c: float(np.max(np.abs(v))) for c, v in _cells(ref64).items()}
  return all(exact[c] <= max(own[c], tolerance, rel_tolerance * scale[c]) for c in exact)


def latent_labels(model) -> list[str]:
  """Names of the KL columns: z1, z2, ... (HVAE) or z1 BU, z1 TD, ..., zL (BIVA)."""
  layers = model.latent_layers
  if len(set(layers)) == len(layers):
    return [f"z{i}" for i in layers]
  return [f"z{l} {'BU' if layers[:i].count(l) == 0 else 'TD'}" if layers.count(l) > 1
          else f"z{l}" for i, l in enumerate(layers)]


def diff_table(a: dict, b: dict, labels: list[str], ks) -> tuple[list[str], dict]:
  """Rows of max |a - b| over images per quantity and k (mean |b| in brackets), and the
  maxima by (row label, k)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  cells = max_diffs(a, b)
  names = [("log p(x|z)", "log_px", None)] + [(f"KL {n}", "kl", i) for i, n in enumerate(labels)]
  names.append(("bound (ELBO, L^{>k})", "bound", None))
  rows, by_label = [], {}
  for label, key, col in names:
    row = []
    for k in ks:
      y = np.asarray(b[f"{key}_k{k}"], np.float64)
      y = y if col is None else y[:, col]
      by_label[label, k] = cells[key, col, k]
      row.append(f"{cells[key, col, k]:9.2e} ({float(np.mean(np.abs(y))):8.2f})")
    rows.append(f"{label:<22}" + "".join(f"  {c:>20}" for c in row))
  header = f"{'quantity':<22}" + "".join(
      f"  {f'k={k}' + (' (ELBO)' if k == 0 else ''):>20}" for k in ks)
  return [header] + rows, by_label


def report(a, ours: dict, ref: dict, info: dict, model, n_params: int) -> tuple[str, bool]:
  ref32 = {k[4:]: v for k, v in ref.items() if k.startswith("f32_")}
  ref64 = {k[4:]: v for k, v in ref.items() if k.startswith("f64_")}
  labels, ks = latent_labels(model), range(len(model.blocks))
  main, a_cells = diff_table(ours, ref32, labels, ks)
  own, b_cells = diff_table(ref32, ref64, labels, ks)
  exact, c_cells = diff_table(ours, ref64, labels, ks)
  worst = max(a_cells.values())
  rounding = rounding_only(ours, ref, a.tolerance)
  relative = a.rel_tolerance > 0 and rounding_only(ours, ref, a.tolerance, a.rel_tolerance)
  missed = "; ".join(f"{label} k={k}: C {c_cells[label, k]:.2e}, B {b_cells[label, k]:.2e}"
                     for label, k in c_cells
                     if c_cells[label, k] > max(b_cells[label, k], a.tolerance))
  trained = (f"trained {a.train_steps} Adam steps (lr {a.train_lr:g}, batch {a.batch}, plain ELBO) from "
             f"its data-dependent init; last -ELBOs "
             f"{[round(v, 1) for v in info['last_train_losses']]}"
             if not a.reference_model else f"loaded from {a.reference_model}")
  inputs = ("32x32 patches of scikit-learn's sample photographs (china.jpg, flower.jpg), "
            "uint8 for ours, k / 255 for the reference" if model.likelihood == "dmol" else
            f"{a.config_data} test images, preprocess.eval_binarize(seed 0)")
  lines = [
      f"Reference equivalence, {datetime.date.today().isoformat()}, {platform.node()}, CPU",
      f"Command: {a.command}",
      f"Reference: hvae-oodd commit {a.ref_commit}, torch {info['torch']}, its "
      f"{a.spec['class_name']} as dvae_run.py builds it for {a.config} "
      f"{' '.join(a.set)} (bench/reference_model.py), {info['n_params']:,} parameters; "
      f"{trained}",
      f"Ours: that checkpoint converted by hvae_jax.port.convert, loaded with "
      f"hvae_jax.load_model: {n_params:,} parameters",
      f"Inputs: {a.n} {inputs}, identical on both sides; every latent at its mean "
      f"(reference use_mode=True, ours key=None)",
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
      else f"Cells where ours is farther from the float64 result than the reference's float32 "
      f"result (C > max(B, tolerance)): {missed}.",
  ]
  if not rounding:
    lines.append(f"PASS at --rel_tolerance={a.rel_tolerance:g}: in every such cell C <= "
                 f"{a.rel_tolerance:g} x the cell's largest |value|" if relative else
                 "FAIL" + (f" (also at --rel_tolerance={a.rel_tolerance:g})"
                           if a.rel_tolerance else ""))
  return "\n".join(lines), worst <= a.tolerance or rounding or relative


def load_config(path: str, settings: list[str]):
  """Our config from `path` with each `key=value` of --set (value a Python literal or a word)."""
  from hvae_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  overrides = {}
  for s in settings:
    key, _, value = s.partition("=")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return config_lib.load_config(path, overrides)


def parent_main(a):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from bench.reference_model import reference_spec  # pylint: disable=import-outside-toplevel
  from hvae_jax import api, port  # pylint: disable=import-outside-toplevel
  from hvae_jax.layers import count_params  # pylint: disable=import-outside-toplevel
  config = load_config(a.config, a.set)
  a.spec, a.config_data = reference_spec(config), config.data.name
  cpus = sorted(os.sched_getaffinity(0))
  env = reference_env(a, len(cpus))
  train, x = images(config, a)
  with tempfile.TemporaryDirectory() as tmp:
    a.work_dir = a.work_dir or tmp
    os.makedirs(a.work_dir, exist_ok=True)
    np.savez(os.path.join(a.work_dir, "inputs.npz"), test=x, train=train)
    with open(os.path.join(a.work_dir, "spec.json"), "w", encoding="utf-8") as f:
      json.dump(a.spec, f)
    cmd = [a.ref_python, os.path.abspath(__file__), "--_role", "ref"] + [
        f"--{k}={getattr(a, k)}" for k in ("work_dir", "seed", "train_steps", "train_lr", "batch",
                                            "eval_batch", "reference_model")]
    info = run_child(cmd + [f"--threads={len(cpus)}"], env, cpus, "reference: scores",
                     busy_probe_s=3.0)
    ref = dict(np.load(os.path.join(a.work_dir, "reference_scores.npz")))
    m = api.load_model(port.convert(info["model_dir"], config, os.path.join(tmp, "ported")))
    ours = ours_scores(m.model, m.params, x, range(len(m.model.blocks)), a.eval_batch)
    text, passed = report(a, ours, ref, info, m.model, count_params(m.params))
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
  ap.add_argument("--config", default="configs/fmnist_hvae.py", help="our config of the model")
  ap.add_argument("--set", action="append", default=[], help="key=value config change")
  ap.add_argument("--n", type=int, default=1000, help="test images compared")
  ap.add_argument("--train_steps", type=int, default=200, help="reference Adam steps")
  ap.add_argument("--train_lr", type=float, default=3e-4, help="their learning rate (the plain "
                  "ELBO from the init diverges at 3e-4 for the 256-channel CIFAR VAE)")
  ap.add_argument("--batch", type=int, default=64, help="reference training batch")
  ap.add_argument("--eval_batch", type=int, default=500)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tolerance", type=float, default=1e-3, help="nats per image")
  ap.add_argument("--rel_tolerance", type=float, default=0.0, help="also pass a cell whose C is "
                  "within this share of its largest |value| (tests/unit/test_port.py: 1e-5)")
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
