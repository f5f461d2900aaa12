"""How much a user's verdict moves with the images it is calibrated and measured on.

Reads the score caches an `evaluate.py` run left in its output folder (in-distribution test and
train sets, OOD sets; every image's scores depend only on the image, the model and the seed, so
a subset's scores are the full run's) and, for R seeded resamples, does what
`evaluate.py --max_examples=N --seed=r` would: N test and N OOD images, N training images as
the reference (each detector fitted on one half, calibrated on the other), then measures
every detector's acceptance of the N test images and the share of each OOD set it flags.
Prints min / median / max over the resamples, both for detectors refitted on each resample's
reference ("refit") and for the whole run's detectors (the shipped threshold.json) applied to
the resampled images ("whole-run verdict"), and the detectors on the whole run.

  python bench/verdict_resamples.py --scores=$HOME/runs/fmnist_hvae_s1_10k --ood=mnist --n=1000
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hvae_jax import evaluation, metrics  # pylint: disable=wrong-import-position


def load(folder: str, tag: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(folder, f"scores_{tag}.npz")) as f:
    return {k: f[k] for k in f.files if not k.startswith("_")}


def subset(s: dict, n: int, rng: np.random.Generator) -> dict:
  idx = np.sort(rng.choice(len(s["elbo"]), n, replace=False))
  return {k: v[idx] for k, v in s.items()}


def measure(test: dict, train: dict, oods: dict, ks: tuple, seed: int,
            fitted: dict | None = None) -> dict:
  """Every detector fitted on `train` (two halves), or the given `fitted` ones; its AUROC,
  acceptance and flag rates on `test` and `oods`."""
  fitted = fitted or evaluation.fit_detectors(train, evaluation.EvalSettings(ks=ks, seed=seed))
  out = {}
  for rule, d in fitted.items():
    v = evaluation.verdict_summary(d, test, oods)
    s_in = d.score(test)[0]
    v["auroc"] = {n: metrics.ood_metrics(s_in, d.score(o)[0])["auroc"] for n, o in oods.items()}
    out[rule] = v
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--scores", required=True, help="an evaluate.py output folder (its caches)")
  p.add_argument("--in_name", default="fashion_mnist")
  p.add_argument("--ood", default="mnist", help="comma-separated OOD set names")
  p.add_argument("--n", type=int, default=1000, help="images per set in a resample")
  p.add_argument("--resamples", type=int, default=10)
  a = p.parse_args()
  test, train = load(a.scores, f"{a.in_name}_test"), load(a.scores, f"{a.in_name}_train")
  oods = {n: load(a.scores, f"{n}_test") for n in a.ood.split(",")}
  ks = tuple(int(k[5:]) for k in test if k.startswith("llr_k"))
  fitted = evaluation.fit_detectors(train, evaluation.EvalSettings(ks=ks, seed=0))
  whole = measure(test, train, oods, ks, 0, fitted)
  refit, shipped = [], []  # a user's 1000 vs 1000 run; the whole run's verdict on the subsets
  for r in range(a.resamples):
    rng = np.random.default_rng([r, 11])
    sub_test, sub_train = subset(test, a.n, rng), subset(train, a.n, rng)
    sub_oods = {n: subset(o, a.n, rng) for n, o in oods.items()}
    refit.append(measure(sub_test, sub_train, sub_oods, ks, r))
    shipped.append(measure(sub_test, sub_train, sub_oods, ks, r, fitted))
  print(f"{len(test['elbo'])} test / {len(train['elbo'])} reference images; "
        f"{a.resamples} resamples of {a.n} (min / median / max)")
  spread = lambda v: f"{min(v):.3f}/{np.median(v):.3f}/{max(v):.3f}"
  for rule in whole:
    line = f"{rule:10s} whole: accepts {whole[rule]['acceptance']:.3f}"
    for what, runs in (("refit", refit), ("whole-run verdict", shipped)):
      line += f" | {what}: accepts {spread([x[rule]['acceptance'] for x in runs])}"
      for n in oods:
        line += f", {n} flagged {spread([x[rule]['ood_flagged'][n] for x in runs])}"
    for n in oods:
      line += (f" | {n}: AUROC {whole[rule]['auroc'][n]:.4f} flags "
               f"{whole[rule]['ood_flagged'][n]:.3f}")
    print(line, flush=True)


if __name__ == "__main__":
  main()
