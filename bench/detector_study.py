"""The per-layer detectors compared, the default chosen by the stated rule, the reference size.

  python bench/detector_study.py --model=pretrained/fmnist_hvae --workdir=$HOME/runs/study/paper

Scores (cached and resumable in <workdir>/eval, evaluate.py's cache format, so
`evaluate.py --output=<workdir>/eval` reuses the test and MNIST sets): a pool of training images
(the reference), a validation family made from *other* training images
(`lowlevel.VALIDATION`), the FashionMNIST test set, MNIST and the report's low-level sets
(`lowlevel.SHIFTS` of test images). Then, with numpy only:

1. every rule of `detectors.combined` (and llr_k<k>) fitted on one half of
   `--reference_examples` pool images and calibrated on the other;
2. the selection rule of docs/RESULTS.md ("Choosing the default detector"), applied to the
   validation family alone: V = mean share flagged over the validation sets at the calibrated
   threshold, its SE from `--boot` resamples of the calibration fold and of each set; the
   default is the simplest rule (`SIMPLICITY`) whose V is within one SE of the best V;
3. Table 2 rows on MNIST (AUROC +/- SE, FPR95, AUPR-In/Out, share flagged), the share flagged
   of each low-level set, acceptance of the test set;
4. the reference size: the chosen rule fitted on 5 seeded pool subsets per size, MNIST's
   share flagged min / median / max.
Writes <workdir>/study.json and a markdown report (--report).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position

from hvae_jax import cache, data, detectors, metrics  # pylint: disable=wrong-import-position
from hvae_jax.data import lowlevel  # pylint: disable=wrong-import-position
from hvae_jax.evaluation import EvalSettings, scoring  # pylint: disable=wrong-import-position
from hvae_jax.trained import load_model  # pylint: disable=wrong-import-position

# Simplest first: fewer fitted quantities, fewer statistics. Ties within one SE go left.
SIMPLICITY = ("llr_k1", "any_k", "any_k_typ", "joint_k1", "joint", "any_stat", "dose_mcd_elbo",
              "dose_mcd", "dose_gmm_elbo", "dose_gmm", "dose_kde_elbo", "dose_kde")
SIZES = (500, 1000, 2000, 4000, 8000)


def score_sets(trained, sets: dict, settings: EvalSettings, directory: str) -> dict:
  """name -> scores, each set scored once (`scoring.score_set` caches and resumes)."""
  store = cache.ScoreCache(directory)
  return {name: scoring.score_set(trained, x, settings, store, name).scores
          for name, x in sets.items()}


def make_sets(args) -> dict:
  """The study's image sets (uint8 [N, H, W, 1]), seeded."""
  train = data.load_images("fashion_mnist", "train")
  test = data.load_images("fashion_mnist", "test")
  rng = np.random.default_rng([args.seed, 11])
  order = rng.permutation(len(train))
  pool, rest = np.sort(order[:args.pool]), order[args.pool:]
  val_base = train[np.sort(rest[:args.per_set])]
  low_base = scoring.limit(test, args.per_set, args.seed)
  sets = {"fashion_mnist_test": scoring.limit(test, args.test_examples, args.seed),
          "mnist_test": scoring.limit(data.load_images("mnist", "test"), args.test_examples,
                                      args.seed),
          "study_pool": train[pool]}
  sets.update({f"val_{s}": lowlevel.apply(val_base, s, args.seed) for s in lowlevel.VALIDATION})
  sets.update({f"fashion_mnist+{s}_test": lowlevel.apply(low_base, s, args.seed)
               for s in lowlevel.SHIFTS})
  return sets


def fit_all(rules, ks, pool: dict, idx: np.ndarray, seed: int, tpr: float) -> dict:
  fit, cal = detectors.halves(len(idx), seed)
  ref = detectors.pick(pool, idx[fit])
  calib = detectors.pick(pool, idx[cal])
  return {r: (detectors.fit(r, ks, ref, calib, tpr, seed), calib) for r in rules}


def selection(fitted: dict, val: dict, boot: int, seed: int, tpr: float) -> dict:
  """V (mean share flagged over the validation sets) per rule and its bootstrap SE."""
  rng = np.random.default_rng([seed, 13])
  out = {}
  for rule, (d, calib) in fitted.items():
    s_cal = d.score(calib)[0]
    s_val = [d.score(v)[0] for v in val.values()]
    v = float(np.mean([np.mean(s > d.threshold) for s in s_val]))
    reps = []
    for _ in range(boot):
      th = metrics.calibrate_threshold(rng.choice(s_cal, len(s_cal)), tpr)
      reps.append(np.mean([np.mean(rng.choice(s, len(s)) > th) for s in s_val]))
    out[rule] = {"V": v, "se": float(np.std(reps)),
                 "per_set": {n: float(np.mean(s > d.threshold)) for n, s in zip(val, s_val)}}
  return out


def choose(sel: dict) -> str:
  best = max(sel, key=lambda r: sel[r]["V"])
  bar = sel[best]["V"] - sel[best]["se"]
  for rule in SIMPLICITY:
    if rule in sel and sel[rule]["V"] >= bar:
      return rule
  return best


def table_rows(fitted: dict, scores: dict, seed: int) -> dict:
  rows = {}
  test, mnist = scores["fashion_mnist_test"], scores["mnist_test"]
  for rule, (d, _) in fitted.items():
    s_in, s_out = d.score(test)[0], d.score(mnist)[0]
    m = metrics.evaluate_scores({rule: s_in}, {rule: s_out}, seed)[rule]
    flags, driver = d.flags(mnist)
    names, counts = np.unique(driver[flags], return_counts=True)
    low = {n.split("+")[1].removesuffix("_test"): float(np.mean(d.flags(s)[0]))
           for n, s in scores.items() if "+" in n}
    rows[rule] = {**{k: m[k] for k in ("auroc", "auroc_se", "fpr95", "aupr_in", "aupr_out")},
                  "acceptance": float(np.mean(~d.flags(test)[0])),
                  "mnist_flagged": float(np.mean(flags)), "lowlevel_flagged": low,
                  "features": list(d.features_of), "density": d.density and d.density.summary,
                  "mnist_driven_by": {str(n): int(c) for n, c in zip(names, counts)}}
  return rows


def reference_sizes(rule: str, ks, pool: dict, scores: dict, seed: int, tpr: float) -> dict:
  n_pool = len(pool["elbo"])
  out = {}
  for size in [s for s in SIZES if s <= n_pool] or [n_pool]:
    flagged, accepted = [], []
    for rep in range(5):
      idx = np.sort(np.random.default_rng([seed, 17, size, rep]).choice(n_pool, size, False))
      d, _ = fit_all([rule], ks, pool, idx, rep, tpr)[rule]
      flagged.append(float(np.mean(d.flags(scores["mnist_test"])[0])))
      accepted.append(float(np.mean(~d.flags(scores["fashion_mnist_test"])[0])))
    out[size] = {"mnist_flagged": flagged, "acceptance": accepted}
  return out


def markdown(out: dict) -> str:
  """The study as markdown: selection (V +/- SE per rule), Table 2 rows, low-level shares,
  reference sizes."""
  sel, rows, chosen = out["selection"], out["rows"], out["chosen"]
  val = list(next(iter(sel.values()))["per_set"])
  low = list(next(iter(rows.values()))["lowlevel_flagged"])
  lines = [f"Model `{out['model']}`; reference {out['args']['reference_examples']} training "
           f"images (fit on one half, calibrated on the other); chosen by the stated rule: "
           f"**`{chosen}`**.", "", "Selection on the validation family (share flagged):", "",
           "| rule | V ± SE | " + " | ".join(val) + " |", "|---" * (len(val) + 2) + "|"]
  for r, v in sorted(sel.items(), key=lambda kv: -kv[1]["V"]):
    mark = "**" if r == chosen else ""
    lines.append(f"| {mark}{r}{mark} | {v['V']:.3f} ± {v['se']:.3f} | "
                 + " | ".join(f"{v['per_set'][n]:.2f}" for n in val) + " |")
  lines += ["", "Reported afterwards: FashionMNIST test (10k) vs MNIST (10k), and the low-level "
            "sets (1,000 test images each), share flagged at the calibrated threshold:", "",
            "| rule | AUROC ± SE | FPR95 | AUPR-In | AUPR-Out | accepts test | flags MNIST | "
            + " | ".join(f"flags {n}" for n in low) + " |", "|---" * (len(low) + 7) + "|"]
  for r, v in sorted(rows.items(), key=lambda kv: -kv[1]["auroc"]):
    mark = "**" if r == chosen else ""
    lines.append(f"| {mark}{r}{mark} | {v['auroc']:.4f} ± {v['auroc_se']:.4f} | {v['fpr95']:.3f} | "
                 f"{v['aupr_in']:.3f} | {v['aupr_out']:.3f} | {v['acceptance']:.1%} | "
                 f"{v['mnist_flagged']:.1%} | "
                 + " | ".join(f"{v['lowlevel_flagged'][n]:.1%}" for n in low) + " |")
  c = rows[chosen]
  lines += ["", f"`{chosen}` reads {c['features']} ({c['density'] or 'tail tests'}); what drove "
            f"its MNIST flags: {c['mnist_driven_by']}.", "",
            "Reference size (the chosen rule, 5 seeded reference subsets each; MNIST share "
            "flagged and test acceptance, min / median / max):", "",
            "| reference images | flags MNIST | accepts test |", "|---|---|---|"]
  for size, v in out["reference_sizes"].items():
    f, acc = np.asarray(v["mnist_flagged"]), np.asarray(v["acceptance"])
    lines.append(f"| {size} | {f.min():.1%} / {np.median(f):.1%} / {f.max():.1%} | "
                 f"{acc.min():.1%} / {np.median(acc):.1%} / {acc.max():.1%} |")
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="pretrained/fmnist_hvae")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--pool", type=int, default=10000, help="training images of the reference pool")
  ap.add_argument("--per_set", type=int, default=1000, help="images per generated set")
  ap.add_argument("--test_examples", type=int, default=-1, help="test and MNIST images (-1: all)")
  ap.add_argument("--reference_examples", type=int, default=4000)
  ap.add_argument("--batch_size", type=int, default=500)
  ap.add_argument("--boot", type=int, default=200)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tpr", type=float, default=0.95)
  ap.add_argument("--score_only", action="store_true")
  ap.add_argument("--render", default="", help="write <workdir>/study.json as markdown here")
  a = ap.parse_args()
  if a.render:
    with open(os.path.join(a.workdir, "study.json"), encoding="utf-8") as f:
      text = markdown(json.load(f))
    with open(a.render, "w", encoding="utf-8") as f:
      f.write(text)
    return
  trained = load_model(a.model)
  settings = EvalSettings(ks=trained.default_ks(), batch_size=a.batch_size, seed=a.seed)
  scores = score_sets(trained, make_sets(a), settings, os.path.join(a.workdir, "eval"))
  if a.score_only:
    return
  ks = settings.ks
  rules = detectors.combined(ks) + [f"llr_k{k}" for k in ks]
  pool = scores["study_pool"]
  idx = np.sort(np.random.default_rng([a.seed, 19]).choice(len(pool["elbo"]),
                                                            a.reference_examples, False))
  fitted = fit_all(rules, ks, pool, idx, a.seed, a.tpr)
  val = {n.removeprefix("val_"): s for n, s in scores.items() if n.startswith("val_")}
  sel = selection(fitted, val, a.boot, a.seed, a.tpr)
  chosen = choose(sel)
  out = {"model": a.model, "args": vars(a), "selection": sel, "chosen": chosen,
         "rows": table_rows(fitted, scores, a.seed),
         "reference_sizes": reference_sizes(chosen, ks, pool, scores, a.seed, a.tpr)}
  with open(os.path.join(a.workdir, "study.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  print(json.dumps({"chosen": chosen, "V": sel[chosen], "row": out["rows"][chosen]}, indent=1))


if __name__ == "__main__":
  main()
