"""OOD evaluation as in the paper's Tables 1-3: load the sets, score them, measure, calibrate
the verdict and write the report.

`evaluate` is the one path behind `evaluate.py` and `hvae_jax.evaluate`; it writes into the
output dir: `results.json`, `results.md` (`report.markdown_report`), `roc_<ood>.png`,
`hist_<ood>.png`, `threshold.json` (the default detector, bound to the model: `thresholds`),
per set the flagged images (`flagged`: `<set>_scores.csv`, `<set>_most_ood.png`,
`<set>_least_ood.png`) and per-set score caches (`cache.ScoreCache`: reused only for the same
model, images and settings). Sets are named by `data.short_names` (a folder's base name, ...);
results.json maps each short name to the data set it names.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Optional, Sequence, Union

import jax
import numpy as np

from hvae_jax import baselines, cache, checks, data, detectors, metrics, plots, thresholds
from hvae_jax.evaluation import calibration, flagged, report, scoring
from hvae_jax.evaluation.settings import EvalOptions, EvalSettings
from hvae_jax.scored import ExtraScorer
from hvae_jax.trained import TrainedModel

def orientation(name: str) -> int:
  """+1 if larger = more OOD. Bounds (elbo, lk_*) and log p(x|z) (recon*) are
  log-likelihoods: lower = more OOD; a KL term (kl_*) larger = more OOD.

  LLR^{>k} (llr_*) and the baselines of `hvae_jax.baselines` (iw_nll, typicality,
  typicality_batch, complexity_png/_jp2, bg_llr, neg_waic, regret) are built larger = more OOD.
  """
  larger = name.startswith(("llr", "kl_")) or baselines.larger_is_ood(name)
  return 1 if larger else -1


def default_output_dir(model_path: str, leaf: str = "eval") -> str:
  """Where results go without `--output`: `<workdir>/<leaf>` for a training workdir (or a
  checkpoint in one); for any other checkpoint (a shipped model under `pretrained/`, a
  converted one) `workdirs/<its name>/<leaf>`, so nothing is written into shipped models."""
  if not model_path:
    raise ValueError("this model has no path; pass an output folder (output_dir= / --output).")
  root = os.path.abspath(model_path)
  if os.path.basename(os.path.dirname(root)) == "checkpoints":  # <workdir>/checkpoints/<step>
    root = os.path.dirname(os.path.dirname(root))
  elif os.path.basename(root) == "checkpoints":
    root = os.path.dirname(root)
  if os.path.isfile(os.path.join(root, "metrics.jsonl")):  # training writes it: a workdir
    return os.path.join(root, leaf)
  return os.path.join("workdirs", os.path.basename(root), leaf)


def evaluate(trained: TrainedModel, settings: EvalSettings, options: EvalOptions = EvalOptions(),
             *, ood: Union[Sequence[str], Mapping[str, Union[str, np.ndarray]]] = ("mnist",),
             in_test: Optional[np.ndarray] = None, in_train: Optional[np.ndarray] = None,
             output_dir: Optional[str] = None, data_dir: Optional[str] = None) -> dict:
  """The whole evaluation of `trained`: load the sets, score, report (see `run`).

  Args:
    trained: the model (`trained.load_model`).
    settings, options: `EvalSettings.from_config` / `EvalOptions.from_config` of the config
      `settings.eval_config` makes.
    ood: OOD data sets by any name `data.load_set` reads (registry names, aliases 'svhn',
      'fmnist', `folder:PATH`, `npz:PATH`, `tfds:NAME`, each with an optional `+shift`),
      reported under their short names (`data.short_names`); or short name -> uint8 images
      or such a name. folder:, npz: and tfds: sets are brought to the model's image shape.
    in_test, in_train: uint8 in-distribution images; default the config's test and train
      splits of `config.data.name`.
    output_dir: default `default_output_dir(trained.path)`.
    data_dir: folder with the offline data (default the config's, then $HVAE_DATA_DIR).

  Returns:
    The results dict of `run`, plus 'output_dir'.
  """
  c = trained.config
  out_dir = os.fspath(output_dir) if output_dir else default_output_dir(trained.path)
  d_dir = data_dir or c.data.data_dir or None
  if d_dir and not os.path.isdir(d_dir):
    raise ValueError(f"data_dir={d_dir!r} is not a folder; point it at the folder with the "
                     f"offline data sets (e.g. ../shared/data).")
  checks.writable_path("output folder", out_dir, folder=True)  # before any work is done
  in_name = data.parse(c.data.name).short
  if isinstance(ood, str):
    ood = (ood,)
  # Every name is checked before any loading: an unknown one fails at once.
  wanted = ({str(n): str(data.parse(v)) if isinstance(v, str) else v for n, v in ood.items()}
            if isinstance(ood, Mapping) else
            data.short_names(ood, taken=(in_name, f"{in_name}_test")))

  def load(what: Union[str, np.ndarray], split: str) -> data.ImageSet:
    if not isinstance(what, str):
      return data.ImageSet(np.asarray(what), [str(i) for i in range(len(what))], "array")
    return data.load_set(what, split, d_dir, c.data.source, image_shape=trained.image_shape,
                         seed=settings.seed)

  test_set = load(c.data.name if in_test is None else in_test, c.data.test_split)
  in_test = trained.check_images(test_set.images)
  in_train = trained.check_images(load(c.data.name if in_train is None else in_train,
                                       c.data.train_split).images)
  ood_sets, ids = {}, {in_name: test_set.ids}
  for n, what in wanted.items():
    loaded = load(what, data.OOD_SPLIT)
    try:
      ood_sets[n] = trained.check_images(loaded.images)
    except ValueError as e:
      raise ValueError(f"OOD set {n!r} cannot be scored by this model: {e}") from None
    ids[n] = loaded.ids
  sources = {n: what if isinstance(what, str) else "array"
             for n, what in {in_name: c.data.name, **wanted}.items()}
  score_cache = cache.ScoreCache(out_dir, use=options.use_cache)
  baseline = dataclasses.replace(options.baseline, chunk_size=c.eval.chunk_size,
                                 batch_size=settings.batch_size, seed=settings.seed)
  n_eval = len(in_test) if settings.max_examples < 0 else min(settings.max_examples,
                                                                len(in_test))  # as `limit`
  extra = baselines.make_scorer(
      trained, options.scores, in_train, n_eval, baseline,
      background=options.background, ensemble=options.ensemble, score_cache=score_cache,
      progress=options.progress)
  results = run(trained, in_name, in_test, in_train, ood_sets, settings, out_dir,
                extra_scores=extra, score_cache=score_cache, image_ids=ids, data_sets=sources)
  results["output_dir"] = os.path.abspath(out_dir)
  return results


def run(trained: TrainedModel, in_name: str, in_test: np.ndarray, in_train: np.ndarray,
        ood_sets: dict[str, np.ndarray], settings: EvalSettings, out_dir: str,
        extra_scores: Optional[ExtraScorer] = None,
        score_cache: Optional[cache.ScoreCache] = None,
        image_ids: Optional[Mapping[str, Sequence[str]]] = None,
        data_sets: Optional[Mapping[str, str]] = None) -> dict:
  """Scores everything, computes metrics and writes the report; returns the results dict.

  `in_train` (a seeded subset of the in-distribution training split, as many as test
  images) is the detectors' reference: each is fitted on one half of it and its threshold
  calibrated at `threshold_tpr` acceptance on the other half (`calibration.fit_detectors`),
  so no image whose metrics are reported is used; its acceptance is measured on every test
  image. That needs training images to score like test images, which the paper's
  train-vs-test sanity check (AUROC ~ 0.5, with its standard error) shows.
  `extra_scores(tag, images)` may add more per-example scores (larger = more OOD, or see
  `orientation`); its `settings` are recorded as results['extra_scores_settings']. Every
  score's throughput (examples/s over all sets, scoring time including compilation) is
  recorded as results['examples_per_s']. `image_ids[set]` names each image of the
  in-distribution test set (`in_name`) and of each OOD set in its CSV and grids (default: its
  index); `data_sets` (short name -> the data set it names) goes to results['data_sets'].
  """
  # Several processes score together (each gets every score); process 0 alone writes.
  writes = jax.process_index() == 0
  if writes:
    os.makedirs(out_dir, exist_ok=True)
  score_cache = score_cache or cache.ScoreCache(out_dir)
  # What names each shown image: the same seeded subset of its ids as of the images.
  shown = {n: scoring.limit(np.asarray((image_ids or {}).get(n, range(len(x))), str),
                            settings.max_examples, settings.seed)
           for n, x in {in_name: in_test, **ood_sets}.items()}
  in_test = scoring.limit(in_test, settings.max_examples, settings.seed)
  # The reference (training images) last: an expensive run has the metrics' sets first.
  sets = {f"{in_name}_test": in_test}
  sets.update({f"{name}_test": scoring.limit(x, settings.max_examples, settings.seed)
               for name, x in ood_sets.items()})
  sets[f"{in_name}_train"] = scoring.limit(in_train, settings.reference_examples, settings.seed)
  scores = {}
  seconds: dict[str, list] = {}  # name -> [seconds, examples]
  for tag, x in sets.items():
    scored = scoring.score_set(trained, x, settings, score_cache, tag)
    if extra_scores is not None:
      extra = extra_scores(tag, x)
      scored.scores.update(extra.scores)
      scored.seconds.update(extra.seconds)
    scores[tag] = scored.scores
    for n, t in scored.seconds.items():
      acc = seconds.setdefault(n, [0.0, 0])
      acc[0] += t
      acc[1] += len(x)

  in_test_s, ref_s = scores[f"{in_name}_test"], scores[f"{in_name}_train"]
  names = [n for n in in_test_s if not n.endswith("_bpd")]
  orient = {n: orientation(n) for n in names}
  results = {"settings": dataclasses.asdict(settings), "model": trained.path,
             "in_distribution": in_name, "bits_per_dim": {}, "ood": {}}
  results["data_sets"] = dict(data_sets or {})
  if extra_scores is not None:
    results["extra_scores_settings"] = extra_scores.settings
  results["examples_per_s"] = {n: (seconds[n][1] / seconds[n][0]) if seconds.get(n) and
                               seconds[n][0] else None for n in names}
  for tag, s in scores.items():
    results["bits_per_dim"][tag] = {n: float(np.mean(v)) for n, v in s.items() if n.endswith("_bpd")}
  # The detectors' reference is the training images, so they must score like test images.
  results["train_vs_test"] = metrics.evaluate_scores({n: ref_s[n] for n in names},
                                                     {n: in_test_s[n] for n in names},
                                                     settings.seed, orient)
  fitted = calibration.fit_detectors(ref_s, settings)
  combined = detectors.combined(settings.ks)
  for s in scores.values():  # the combined rows of Table 2, on every set
    s.update({rule: fitted[rule].score(s)[0] for rule in combined})
  rows = names + combined
  orient.update({rule: 1 for rule in combined})
  for ood_name in ood_sets:
    out_s = scores[f"{ood_name}_test"]
    res = metrics.evaluate_scores({n: in_test_s[n] for n in rows}, {n: out_s[n] for n in rows},
                                  settings.seed, orient)
    best = metrics.select_k_by_auroc(res, prefix="llr_k")
    results["ood"][ood_name] = {"metrics": res, "k_best_auroc": best[0]}
    if not writes:
      continue
    oriented = lambda s: {n: orient[n] * s[n] for n in rows}
    plots.plot_roc(oriented(in_test_s), oriented(out_s), os.path.join(out_dir, f"roc_{ood_name}.png"),
                   title=f"{in_name} (in) vs {ood_name} (OOD)")
    plots.plot_histograms({n: in_test_s[n] for n in names}, {n: out_s[n] for n in names},
                          os.path.join(out_dir, f"hist_{ood_name}.png"),
                          title=f"{in_name} (in) vs {ood_name} (OOD)")
  ood_scores = {n: scores[f"{n}_test"] for n in ood_sets}
  results["verdicts"] = {rule: calibration.verdict_summary(d, in_test_s, ood_scores)
                         for rule, d in fitted.items()}
  threshold = calibration.threshold_for(
      fitted[settings.detector], results["verdicts"][settings.detector], settings,
      model_digest=trained.digest, in_name=in_name, n_reference=len(ref_s["elbo"]),
      n_test=len(in_test_s["elbo"]))
  results["threshold"] = threshold.to_json()
  if not writes:
    return results
  thresholds.write(out_dir, threshold)
  results["flagged"] = flagged.write_all(out_dir, threshold, {
      (f"{n}_test" if n == in_name else n): (sets[f"{n}_test"], ids, scores[f"{n}_test"])
      for n, ids in shown.items()})
  with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({**results, "threshold": threshold.brief()}, f, indent=1)
  with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
    f.write(report.markdown_report(results))
  return results
