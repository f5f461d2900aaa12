"""OOD evaluation as in the paper's Tables 1-3: score sets, compute metrics, write a report.

`evaluate` is the one path behind `evaluate.py` and `hvae_jax.evaluate`: it loads the data
sets, scores them (ELBO, L^{>k}, LLR^{>k}, and with `EvalOptions.scores` the competing scores
of `hvae_jax.competing`), computes the metrics, fits the per-input detectors and writes
into the output dir: `results.json`, `results.md` (bits/dim per bound and AUROC / AUPRC /
FPR80 / FPR95 / AUPR-In per score, the per-input detectors' rows and verdicts),
`roc_<ood>.png`, `hist_<ood>.png`, `threshold.json` (the default detector, bound to the
model: `thresholds`) and per-set score caches (`cache.ScoreCache`: reused only for the same
model, images and settings).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Mapping, Optional, Sequence, Union

import jax
import numpy as np

from hvae_jax import (baselines, batching, cache, checks, competing, data, detectors, lowlevel,
                      metrics, plots, report, sharding, thresholds)
from hvae_jax.api import TrainedModel

# How often a set's scoring keeps what it has scored, so a killed run loses at most this much.
PARTIAL_EVERY_S = 60.0

# Short names users type for data sets.
ALIASES = {"svhn": "svhn_cropped", "fmnist": "fashion_mnist"}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How the paper's scores are computed; checked on construction."""
  ks: tuple[int, ...]
  iw_samples_elbo: int = 1
  iw_samples_lk: int = 1
  batch_size: int = 500
  max_examples: int = -1  # per data set; -1 = all
  seed: int = 0
  threshold_tpr: float = 0.95  # in-distribution acceptance the threshold is calibrated for
  detector: str = "joint_k1"  # the verdict's rule (`detectors`), written to threshold.json

  def __post_init__(self):
    if not self.ks:
      raise ValueError("ks is empty: give at least one k.")
    for name in ("iw_samples_elbo", "iw_samples_lk", "batch_size"):
      checks.positive_int(name, getattr(self, name))
    checks.example_count("max_examples", self.max_examples)
    checks.non_negative_int("seed", self.seed)
    detectors.statistics(self.detector, self.ks)  # a known rule; a single k must be scored
    if not 0.0 < self.threshold_tpr < 1.0:
      raise ValueError(f"threshold_tpr={self.threshold_tpr!r} is not allowed: give an "
                       f"acceptance rate in (0, 1).")

  @classmethod
  def resolve(cls, trained: TrainedModel, *, ks: Optional[Sequence[int]] = None,
              iw_samples: Optional[int] = None, iw_samples_elbo: Optional[int] = None,
              iw_samples_lk: Optional[int] = None, batch_size: Optional[int] = None,
              max_examples: Optional[int] = None, seed: int = 0,
              detector: Optional[str] = None) -> "EvalSettings":
    """The settings from arguments that may be None, else the config's (the config's detector
    when the ks include what it reads, else `any_k` over the ks). `iw_samples` (or its
    long name `iw_samples_elbo`) weights the ELBO only: the paper's LLR^{>k}_S = L_S - L^{>k}
    (eqs. 9-10); `iw_samples_lk` > 1 weights L^{>k} too (both bounds weighted)."""
    c = trained.config.eval
    if iw_samples is not None:
      checks.positive_int("iw_samples", iw_samples)
    if iw_samples is not None and iw_samples_elbo is not None and iw_samples != iw_samples_elbo:
      raise ValueError(f"iw_samples={iw_samples} and iw_samples_elbo={iw_samples_elbo} disagree: "
                       f"both set the ELBO's importance samples; give one.")
    elbo = iw_samples_elbo if iw_samples_elbo is not None else iw_samples
    ks = trained.check_ks(ks)
    if detector is None:  # the config's rule, unless it reads a k that --k left out; then
      # the paper's rule over the ks asked for (with one k, LLR^{>k} itself)
      detector = c.detector if detectors.one_k(c.detector) in (None, *ks) else "any_k"
    return cls(ks=ks,
               iw_samples_elbo=c.iw_samples_elbo if elbo is None else elbo,
               iw_samples_lk=c.iw_samples_lk if iw_samples_lk is None else iw_samples_lk,
               batch_size=c.batch_size if batch_size is None else batch_size,
               max_examples=c.max_examples if max_examples is None else max_examples,
               seed=seed, detector=detector)

  def cache_key(self, trained: TrainedModel, images: np.ndarray) -> str:
    """Everything that changes these scores: model (weights, config), images, settings."""
    # Only what changes a score: each image has its own samples (`image_keys`), so the batch
    # size does not; the images digest covers the subset.
    d = {n: getattr(self, n) for n in ("ks", "iw_samples_elbo", "iw_samples_lk", "seed")}
    return cache.key_of(kind="paper", model=trained.digest, images=cache.array_digest(images),
                        settings=d)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """What is scored besides the paper's scores, and how results are reused."""
  scores: str = "paper"  # 'paper', 'all' or a comma list (competing.parse_scores)
  background: Optional[str] = None  # bg_llr's model; default: <run>_bg
  ensemble: tuple[str, ...] = ()  # waic's other members; default: <run>_seed<N>
  baseline: competing.BaselineOptions = competing.BaselineOptions()
  use_cache: bool = True  # False (--no_cache): rescore, still writing the caches
  progress: bool = True

  def __post_init__(self):
    competing.parse_scores(self.scores)  # an unknown name fails here, before any work
    object.__setattr__(self, "ensemble", tuple(self.ensemble))


def orientation(name: str) -> int:
  """+1 if larger = more OOD. Bounds (elbo, lk_*) are log-likelihoods: lower = more OOD.

  LLR^{>k} (llr_*) and the baselines of `hvae_jax.baselines` (iw_nll, typicality,
  typicality_batch, complexity_png/_jp2, bg_llr, neg_waic, regret) are built larger = more OOD.
  """
  return 1 if name.startswith("llr") or baselines.larger_is_ood(name) else -1


def score_set(trained: TrainedModel, images: np.ndarray, settings: EvalSettings,
              score_cache: cache.ScoreCache, tag: str,
              timings: Optional[dict] = None) -> dict[str, np.ndarray]:
  """Scores of one data set, from `score_cache` if this model, these images and settings
  were scored before.

  With `timings`, sets `timings[tag]` to the seconds the scoring took (when it was computed,
  also for a cache hit).
  """
  key = settings.cache_key(trained, images)
  s = score_cache.get(f"scores_{tag}", key)
  if s is None:
    s = _score_resumably(trained, images, settings, score_cache, tag, key)
    score_cache.put(f"scores_{tag}", key, s)
    score_cache.drop_partial(f"scores_{tag}")
  if timings is not None:
    timings[tag] = float(s["_seconds"])
  return {k: v for k, v in s.items() if k != "_seconds"}


def _score_resumably(trained: TrainedModel, images: np.ndarray, settings: EvalSettings,
                     score_cache: cache.ScoreCache, tag: str, key: str) -> dict[str, np.ndarray]:
  """`trained.score` of a set that keeps its progress in `score_cache` at least every
  PARTIAL_EVERY_S seconds and when stopped (Ctrl-C, an error), and continues a pass a killed
  run left: the scores equal one uninterrupted pass's. `_seconds` counts every run's time."""
  name = f"scores_{tag}"
  mesh = trained.mesh if trained.mesh is not None else sharding.make_data_mesh()
  bs = batching.device_batch_size(settings.batch_size, len(images), mesh)
  pass_key = cache.key_of(scores=key, batch_size=bs)  # another split of the batches starts over
  done = score_cache.get_partial(name, pass_key)
  spent = 0.0 if done is None else float(done.pop("_seconds"))
  if done is not None:
    print(f"Note: {name}: continuing an interrupted pass at image {len(done['elbo'])} of "
          f"{len(images)} (cache in {score_cache.directory}); --no_cache rescores.")
  t0 = time.time()
  kept = {"at": t0, "out": None}

  def keep(out: dict, now: bool = False) -> None:
    kept["out"] = out
    if now or time.time() - kept["at"] >= PARTIAL_EVERY_S:
      score_cache.put_partial(name, pass_key,
                              {**out, "_seconds": np.asarray(spent + time.time() - t0)})
      kept["at"] = time.time()

  try:
    s = trained.score(images, ks=settings.ks, iw_samples=settings.iw_samples_elbo,
                      iw_samples_lk=settings.iw_samples_lk, batch_size=settings.batch_size,
                      seed=settings.seed, progress=True, desc=tag, done=done,
                      on_batch=keep)
  except BaseException:
    if kept["out"] is not None:
      keep(kept["out"], now=True)
    raise
  s["_seconds"] = np.asarray(spent + time.time() - t0)
  return s


def limit(images: np.ndarray, n: int, seed: int) -> np.ndarray:
  """A seeded random subset of `n` images (all if n < 0 or n >= len)."""
  if n < 0 or n >= len(images):
    return images
  return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


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
  if os.path.isfile(os.path.join(root, "metrics.jsonl")):  # train_lib writes it: a workdir
    return os.path.join(root, leaf)
  return os.path.join("workdirs", os.path.basename(root), leaf)


def evaluate(trained: TrainedModel, settings: EvalSettings, options: EvalOptions = EvalOptions(),
             *, ood: Union[Sequence[str], Mapping[str, np.ndarray]] = ("mnist",),
             in_test: Optional[np.ndarray] = None, in_train: Optional[np.ndarray] = None,
             output_dir: Optional[str] = None, data_dir: Optional[str] = None) -> dict:
  """The whole evaluation of `trained`: load the sets, score, report (see `run`).

  Args:
    trained: the model (`api.load_model`).
    settings, options: see `EvalSettings` (`EvalSettings.resolve` fills them from the
      config) and `EvalOptions`.
    ood: OOD data set names (aliases 'svhn', 'fmnist' accepted), or name -> uint8 images.
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
  if isinstance(ood, str):
    ood = (ood,)
  if not isinstance(ood, Mapping):
    ood = ["+".join(filter(None, (ALIASES.get(b, b), shift)))
           for b, shift in map(lowlevel.split_name, ood)]
    for n in ood:
      data.get_spec(lowlevel.split_name(n)[0])  # an unknown name fails before any loading

  def load(name: str, split: str) -> np.ndarray:
    base, shift = lowlevel.split_name(name)
    x = data.load_images(base, split, d_dir, c.data.source)
    return lowlevel.apply(x, shift, settings.seed) if shift else x

  in_test = trained.check_images(load(c.data.name, c.data.test_split) if in_test is None
                                 else in_test)
  in_train = trained.check_images(load(c.data.name, c.data.train_split) if in_train is None
                                  else in_train)
  ood_sets = {}
  for n in ood:
    try:
      ood_sets[str(n)] = trained.check_images(ood[n] if isinstance(ood, Mapping)
                                              else load(n, "test"))
    except ValueError as e:
      raise ValueError(f"OOD set {n!r} cannot be scored by this model: {e}") from None
  score_cache = cache.ScoreCache(out_dir, use=options.use_cache)
  baseline = dataclasses.replace(options.baseline, chunk_size=c.eval.chunk_size,
                                 batch_size=settings.batch_size, seed=settings.seed)
  n_eval = len(in_test) if settings.max_examples < 0 else min(settings.max_examples,
                                                                len(in_test))  # as `limit`
  extra = competing.make_scorer(
      trained, options.scores, in_train, n_eval, baseline,
      background=options.background, ensemble=options.ensemble, score_cache=score_cache,
      progress=options.progress)
  results = run(trained, c.data.name, in_test, in_train, ood_sets, settings, out_dir,
                extra_scores=extra, score_cache=score_cache)
  results["output_dir"] = os.path.abspath(out_dir)
  return results


def run(trained: TrainedModel, in_name: str, in_test: np.ndarray, in_train: np.ndarray,
        ood_sets: dict[str, np.ndarray], settings: EvalSettings, out_dir: str,
        extra_scores: Optional[Callable[[str, np.ndarray], dict[str, np.ndarray]]] = None,
        score_cache: Optional[cache.ScoreCache] = None) -> dict:
  """Scores everything, computes metrics and writes the report; returns the results dict.

  `in_train` (a seeded subset of the in-distribution training split, as many as test
  images) is the detectors' reference: each is fitted on one half of it and its threshold
  calibrated at `threshold_tpr` acceptance on the other half (`fit_detectors`), so no image
  whose metrics are reported is used; its acceptance is measured on every test image. That
  needs training images to score like test images, which the paper's train-vs-test sanity
  check (AUROC ~ 0.5, with its standard error) shows.
  `extra_scores(tag, images)` may add more per-example scores (larger = more OOD, or see
  `orientation`); an entry '_seconds:<name>' (a scalar) gives the seconds <name> cost on that
  set, and an `extra_scores.settings` dict is recorded as results['extra_scores_settings'].
  Every score's throughput (examples/s over all sets, scoring time including compilation) is
  recorded as results['examples_per_s'].
  """
  # Several processes score together (each gets every score); process 0 alone writes.
  writes = jax.process_index() == 0
  if writes:
    os.makedirs(out_dir, exist_ok=True)
  score_cache = score_cache or cache.ScoreCache(out_dir)
  in_test = limit(in_test, settings.max_examples, settings.seed)
  # As many training images as test images: enough for the sanity check and the threshold.
  # The reference (training images) last: an expensive run has the metrics' sets first.
  sets = {f"{in_name}_test": in_test}
  sets.update({f"{name}_test": limit(x, settings.max_examples, settings.seed)
               for name, x in ood_sets.items()})
  sets[f"{in_name}_train"] = limit(in_train, len(in_test), settings.seed)
  scores, timings = {}, {}
  seconds: dict[str, list] = {}  # name -> [seconds, examples], None seconds if unknown
  for tag, x in sets.items():
    scores[tag] = score_set(trained, x, settings, score_cache, tag, timings)
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

  in_test_s, ref_s = scores[f"{in_name}_test"], scores[f"{in_name}_train"]
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
  # The detectors' reference is the training images, so they must score like test images.
  results["train_vs_test"] = metrics.evaluate_scores({n: ref_s[n] for n in names},
                                                     {n: in_test_s[n] for n in names},
                                                     settings.seed, orient)
  fitted = fit_detectors(ref_s, settings)
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
  results["verdicts"] = {rule: verdict_summary(d, in_test_s, ood_scores)
                         for rule, d in fitted.items()}
  results["threshold"] = thresholds.record(
      fitted[settings.detector], model_digest=trained.digest, ks=settings.ks,
      iw_samples_elbo=settings.iw_samples_elbo, iw_samples_lk=settings.iw_samples_lk,
      seed=settings.seed, tpr=settings.threshold_tpr,
      calibrated_on=f"{in_name}_train: {len(ref_s['elbo']) - len(ref_s['elbo']) // 2} "
                    f"reference images (a seeded half; fitted on the other half)",
      acceptance_on=f"{in_name}_test: all {len(in_test_s['elbo'])} images (none fitted or "
                    f"calibrated on)",
      **results["verdicts"][settings.detector])
  if not writes:
    return results
  thresholds.write(out_dir, results["threshold"])
  with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({**results, "threshold": {k: v for k, v in results["threshold"].items()
                                        if k != "reference"}}, f, indent=1)
  with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
    f.write(report.markdown_report(results))
  return results


def fit_detectors(reference: Mapping[str, np.ndarray], settings: EvalSettings
                  ) -> dict[str, detectors.Detector]:
  """Every combined rule and every single k, fitted on one seeded half of the reference
  images' scores and calibrated on the other for `settings.threshold_tpr` acceptance."""
  fit, cal = detectors.halves(len(reference["elbo"]), settings.seed)
  rules = detectors.combined(settings.ks) + [f"llr_k{k}" for k in settings.ks]
  return {rule: detectors.fit(rule, settings.ks, detectors.pick(reference, fit),
                              detectors.pick(reference, cal), settings.threshold_tpr)
          for rule in rules}


def verdict_summary(detector: detectors.Detector, in_scores: Mapping[str, np.ndarray],
                    ood_scores: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
  """A detector's measured acceptance of in-distribution test images, the share of each OOD
  set it flags and, per OOD set, which statistic drove the flags (share of flagged images)."""
  accepted = ~detector.flags(in_scores)[0]
  out = {"threshold": detector.threshold, "acceptance": float(np.mean(accepted)),
         "ood_flagged": {}, "driven_by": {}}
  for name, s in ood_scores.items():
    flags, driver = detector.flags(s)
    out["ood_flagged"][name] = float(np.mean(flags))
    stats, counts = np.unique(driver[flags], return_counts=True)
    out["driven_by"][name] = {str(n): float(c / max(flags.sum(), 1))
                              for n, c in zip(stats, counts)}
  return out
