"""OOD evaluation as in the paper's Tables 1-3: score sets, compute metrics, write a report.

Outputs in the output dir: `results.json`, `results.md` (bits/dim per bound and AUROC /
AUPRC / FPR80 per score), `roc_<ood>.png`, `hist_<ood>.png`, `threshold.json` and the
per-example score cache `scores_<dataset>_<split>.npz` (reused when the settings match).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from hvae_jax import baselines, metrics, plots
from hvae_jax.api import THRESHOLD_FILE, TrainedModel, load_model


@dataclasses.dataclass
class EvalSettings:
  ks: tuple[int, ...]
  iw_samples_elbo: int = 1
  iw_samples_lk: int = 1
  batch_size: int = 500
  max_examples: int = -1  # per data set; -1 = all
  seed: int = 0
  threshold_tpr: float = 0.95

  def cache_tag(self, model_path: str) -> str:
    d = dataclasses.asdict(self)
    d.pop("threshold_tpr")
    d["model"] = os.path.abspath(model_path)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def orientation(name: str) -> int:
  """+1 if larger = more OOD. Bounds (elbo, lk_*) are log-likelihoods: lower = more OOD.

  LLR^{>k} (llr_*) and the baselines of `hvae_jax.baselines` (iw_nll, typicality,
  typicality_batch, complexity_png/_jp2, bg_llr, neg_waic, regret) are built larger = more OOD.
  """
  return 1 if name.startswith("llr") or baselines.larger_is_ood(name) else -1


def score_set(trained: TrainedModel, images: np.ndarray, settings: EvalSettings, out_dir: str,
              tag: str, timings: Optional[dict] = None) -> dict[str, np.ndarray]:
  """Scores of one data set, from the cache in `out_dir` if computed with the same settings.

  With `timings`, sets `timings[tag]` to the seconds the scoring took (when it was computed,
  also for a cache hit; None if the cache does not say).
  """
  cache = os.path.join(out_dir, f"scores_{tag}.npz")
  key = settings.cache_tag(trained.path)
  if os.path.exists(cache):
    with np.load(cache) as f:
      if str(f["_settings"]) == key:
        if timings is not None:
          timings[tag] = float(f["_seconds"]) if "_seconds" in f.files else None
        return {k: f[k] for k in f.files if not k.startswith("_")}
  t0 = time.time()
  s = trained.score(images, ks=settings.ks, iw_samples=settings.iw_samples_elbo,
                    iw_samples_lk=settings.iw_samples_lk, batch_size=settings.batch_size,
                    seed=settings.seed, progress=True, desc=tag)
  s["_seconds"] = np.asarray(time.time() - t0)
  np.savez(cache, _settings=key, **s)
  if timings is not None:
    timings[tag] = float(s["_seconds"])
  s.pop("_seconds")
  return s


def limit(images: np.ndarray, n: int, seed: int) -> np.ndarray:
  """A seeded random subset of `n` images (all if n < 0 or n >= len)."""
  if n < 0 or n >= len(images):
    return images
  return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


def baseline_scorer(trained: TrainedModel, scores: str, in_test: np.ndarray,
                    in_train: np.ndarray, settings: EvalSettings, out_dir: str, *,
                    background: Optional[str] = None, ensemble: Sequence[str] = (),
                    progress: bool = True, **options) -> Optional[baselines.BaselineScorer]:
  """The `extra_scores` for `run` that add the competing scores `scores` ('paper' = none,
  'all', or a comma list, see `baselines.parse_scores`); None for none.

  `background` (bg_llr) and `ensemble` (waic: the other members) are checkpoint paths; when
  not given they are looked up beside the run, where scripts/reproduce_baselines.sh trains
  them (`baselines.auxiliary_runs`). 'all' skips, with a note, what has no models; a family
  asked for by name raises instead. Ĥ of the typicality test comes from training images that
  `run` does not score. `options` go to `baselines.BaselineOptions` (iw_samples,
  typicality_batch, regret_steps, regret_lr, regret_weight_decay, ...).
  """
  families = list(baselines.parse_scores(scores))
  if not families:
    return None
  explicit = "all" not in [s.strip() for s in scores.split(",")]
  found_bg, found_seeds = baselines.auxiliary_runs(trained.path) if trained.path else (None, [])
  aux = {"bg_llr": ([background] if background else [], [found_bg] if found_bg else [],
                    "--background_checkpoint (evaluate.py) or background="),
         "waic": (list(ensemble), found_seeds,
                  "--ensemble_checkpoints (evaluate.py) or ensemble=")}
  paths = {}
  for fam, (given, found, how) in aux.items():
    if fam not in families:
      continue
    if given or found:
      paths[fam] = given or found
      if not given:
        print(f"Note: {fam} uses {', '.join(found)} (found beside {trained.path}; "
              f"{how} chooses others).")
    elif explicit:
      raise ValueError(f"{fam} needs {how}, or the models scripts/reproduce_baselines.sh "
                       f"trains beside the run.")
    else:
      families.remove(fam)
      print(f"Note: skipping {fam} (pass {how}, or train its models with "
            f"scripts/reproduce_baselines.sh {trained.path or '<run>'}).")
  opts = baselines.BaselineOptions(families=tuple(families),
                                  chunk_size=trained.config.eval.chunk_size,
                                  batch_size=settings.batch_size, seed=settings.seed, **options)
  bg_model = load_model(paths["bg_llr"][0]) if "bg_llr" in families else None
  own = os.path.abspath(trained.path) if trained.path else None  # always a member: not twice
  members = ([load_model(p) for p in dict.fromkeys(paths["waic"]) if os.path.abspath(p) != own]
             if "waic" in families else [])
  reference = None
  if "typicality" in families:
    # As many training images as run() scores, and none of those.
    n_eval = len(limit(in_test, settings.max_examples, settings.seed))
    reference = in_train[baselines.reference_indices(len(in_train), n_eval, n_eval,
                                                     settings.seed)]
  return baselines.BaselineScorer(trained, opts, bg_model, members, reference,
                                  cache_dir=out_dir, progress=progress)


def run(trained: TrainedModel, in_name: str, in_test: np.ndarray, in_train: np.ndarray,
        ood_sets: dict[str, np.ndarray], settings: EvalSettings, out_dir: str,
        extra_scores: Optional[Callable[[str, np.ndarray], dict[str, np.ndarray]]] = None) -> dict:
  """Scores everything, computes metrics and writes the report; returns the results dict.

  `in_train` (a subset of the in-distribution training split) serves three label-free
  purposes: the paper's train-vs-test sanity check (AUROC ~ 0.5), an honest choice of k
  without OOD labels, and the decision threshold at `threshold_tpr` acceptance.
  `extra_scores(tag, images)` may add more per-example scores (larger = more OOD, or see
  `orientation`); an entry '_seconds:<name>' (a scalar) gives the seconds <name> cost on that
  set, and an `extra_scores.settings` dict is recorded as results['extra_scores_settings'].
  Every score's throughput (examples/s over all sets, scoring time including compilation) is
  recorded as results['examples_per_s'].
  """
  os.makedirs(out_dir, exist_ok=True)
  in_test = limit(in_test, settings.max_examples, settings.seed)
  # As many training images as test images: enough for the sanity check and the threshold.
  sets = {f"{in_name}_test": in_test,
          f"{in_name}_train": limit(in_train, len(in_test), settings.seed)}
  sets.update({f"{name}_test": limit(x, settings.max_examples, settings.seed)
               for name, x in ood_sets.items()})
  scores, timings = {}, {}
  seconds: dict[str, list] = {}  # name -> [seconds, examples], None seconds if unknown
  for tag, x in sets.items():
    scores[tag] = score_set(trained, x, settings, out_dir, tag, timings)
    costs = {n: timings[tag] for n in scores[tag] if not n.endswith("_bpd")}
    if extra_scores is not None:
      extra = dict(extra_scores(tag, x))
      for k in [k for k in extra if k.startswith("_seconds:")]:
        costs[k.split(":", 1)[1]] = float(extra.pop(k))
      scores[tag].update(extra)
    for n, t in costs.items():
      acc = seconds.setdefault(n, [0.0, 0])
      acc[0] = None if acc[0] is None or t is None else acc[0] + t
      acc[1] += len(x)

  in_test_s, in_train_s = scores[f"{in_name}_test"], scores[f"{in_name}_train"]
  names = [n for n in in_test_s if not n.endswith("_bpd")]
  orient = {n: orientation(n) for n in names}
  results = {"settings": dataclasses.asdict(settings), "model": trained.path,
             "in_distribution": in_name, "bits_per_dim": {}, "ood": {}}
  if extra_scores is not None and isinstance(getattr(extra_scores, "settings", None), dict):
    results["extra_scores_settings"] = extra_scores.settings
  results["examples_per_s"] = {n: (seconds[n][1] / seconds[n][0]) if seconds.get(n) and
                               seconds[n][0] else None for n in names}
  for tag, s in scores.items():
    results["bits_per_dim"][tag] = {n: float(np.mean(v)) for n, v in s.items() if n.endswith("_bpd")}

  sanity = metrics.evaluate_scores({n: in_train_s[n] for n in names},
                                   {n: in_test_s[n] for n in names}, settings.seed, orient)
  results["train_vs_test"] = sanity
  llr_names = [n for n in names if n.startswith("llr_k")]
  k_free = metrics.select_k_unsupervised({n: in_train_s[n] for n in llr_names},
                                         {n: in_test_s[n] for n in llr_names}) if llr_names else None
  results["k_unsupervised"] = k_free

  for ood_name in ood_sets:
    out_s = scores[f"{ood_name}_test"]
    res = metrics.evaluate_scores({n: in_test_s[n] for n in names},
                                  {n: out_s[n] for n in names}, settings.seed, orient)
    best = metrics.select_k_by_auroc(res, prefix="llr_k") if llr_names else (None, None)
    results["ood"][ood_name] = {"metrics": res, "k_best_auroc": best[0], "k_unsupervised": k_free}
    oriented = lambda s: {n: orient[n] * s[n] for n in names}
    plots.plot_roc(oriented(in_test_s), oriented(out_s), os.path.join(out_dir, f"roc_{ood_name}.png"),
                   title=f"{in_name} (in) vs {ood_name} (OOD)")
    plots.plot_histograms({n: in_test_s[n] for n in names}, {n: out_s[n] for n in names},
                          os.path.join(out_dir, f"hist_{ood_name}.png"),
                          title=f"{in_name} (in) vs {ood_name} (OOD)")

  if k_free is not None:
    th = {"score": k_free, "k": int(k_free.split("_k")[1]), "iw_samples": settings.iw_samples_elbo,
          "tpr": settings.threshold_tpr,
          "value": float(metrics.calibrate_threshold(in_train_s[k_free], settings.threshold_tpr)),
          "calibrated_on": f"{in_name}_train ({len(in_train_s[k_free])} images)"}
    results["threshold"] = th
    with open(os.path.join(out_dir, THRESHOLD_FILE), "w", encoding="utf-8") as f:
      json.dump(th, f, indent=1)
  with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
    f.write(markdown_report(results))
  return results


def markdown_report(results: dict) -> str:
  """Tables shaped like the paper's: bits/dim per bound, then metrics per score."""
  in_name = results["in_distribution"]
  lines = [f"# OOD evaluation: {in_name} (in-distribution)", "",
           f"Model: `{results['model']}`; settings: `{json.dumps(results['settings'])}`", "",
           "## Average bits/dim (paper Table 1)", ""]
  bpd_rows = []
  for tag, row in results["bits_per_dim"].items():
    r = {"data": tag, "ELBO (L>0)": row.get("elbo_bpd")}
    r.update({f"L>{n.split('_k')[1].split('_')[0]}": v for n, v in row.items() if n.startswith("lk_k")})
    bpd_rows.append(r)
  cols = list(dict.fromkeys(c for r in bpd_rows for c in r))
  lines += [metrics.markdown_table(bpd_rows, cols), ""]
  for ood_name, res in results["ood"].items():
    lines += [f"## {in_name} -> {ood_name} (paper Table 2), OOD = positive class", "",
              f"k by best AUROC (oracle, as the paper): `{res['k_best_auroc']}`; "
              f"k chosen without OOD labels: `{res['k_unsupervised']}`", ""]
    speed = results.get("examples_per_s", {})
    rows = [{"score": n, "AUROC": m["auroc"], "AUPRC": m["auprc"], "FPR80": m["fpr80"],
             "examples/s": None if speed.get(n) is None else f"{speed[n]:.1f}"}
            for n, m in res["metrics"].items()]
    lines += [metrics.markdown_table(rows, ["score", "AUROC", "AUPRC", "FPR80", "examples/s"]),
              ""]
  lines += ["## Sanity check: in-distribution train vs test (should be ~0.5)", ""]
  rows = [{"score": n, "AUROC": m["auroc"]} for n, m in results["train_vs_test"].items()]
  lines += [metrics.markdown_table(rows, ["score", "AUROC"]), ""]
  if "threshold" in results:
    th = results["threshold"]
    lines += [f"Decision threshold: `{th['score']}` > {th['value']:.3f} flags OOD "
              f"({th['tpr']:.0%} of {th['calibrated_on']} accepted).", ""]
  return "\n".join(lines)
