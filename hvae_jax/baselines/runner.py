"""Running the competing OOD scores (`scores.py`) over whole data sets.

`make_scorer` picks the models a family needs (the background model of bg_llr, the ensemble
of WAIC: given paths, else the runs scripts/reproduce_baselines.sh trains beside the scored
one), the typicality reference set and the options, and returns a `BaselineScorer`, which
`evaluation.evaluate` calls once per data set as its `extra_scores`. The scores themselves
are the pure functions of `scores.py`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from hvae_jax import batching, cache
from hvae_jax.baselines.scores import (CODECS, FAMILIES, LikelihoodRegret, background_llr,
                                       batch_typicality, check_codec, compressed_bits_per_dim,
                                       input_complexity, make_loglik_fn, typicality, waic)
from hvae_jax.scored import ScoredSet
from hvae_jax.trained import TrainedModel, load_model


def parse_scores(spec: str) -> tuple[str, ...]:
  """`--scores` value -> score families. 'paper' (or '') = none beyond ELBO/L^{>k}/LLR;
  'all' = every family; else a comma list of family or row names (and optionally 'paper')."""
  items = [s.strip() for s in (spec or "").split(",") if s.strip()]
  if "all" in items:
    return tuple(FAMILIES)
  row_to_family = {row: fam for fam, rows in FAMILIES.items() for row in rows}
  out = []
  for s in items:
    if s == "paper":
      continue
    fam = s if s in FAMILIES else row_to_family.get(s)
    if fam is None:
      raise ValueError(f"unknown score {s!r} in --scores; choose 'paper', 'all' or from "
                       f"{sorted(FAMILIES)}.")
    if fam not in out:
      out.append(fam)
  return tuple(out)


def auxiliary_runs(path: str) -> tuple[Optional[str], list[str]]:
  """(background model, extra ensemble members) beside the scored run `path`, in the layout
  scripts/reproduce_baselines.sh writes: `<path>_bg` and `<path>_seed<N>` (by N), each only
  if it is a directory; (None, []) when there are none."""
  base = os.path.normpath(path)
  bg = base + "_bg" if os.path.isdir(base + "_bg") else None
  prefix = os.path.basename(base) + "_seed"
  parent = os.path.dirname(base)  # '' for a run in the working directory
  names = os.listdir(parent or ".") if os.path.isdir(parent or ".") else []
  seeds = sorted((int(n[len(prefix):]), os.path.join(parent, n)) for n in names
                 if n.startswith(prefix) and n[len(prefix):].isdigit()
                 and os.path.isdir(os.path.join(parent, n)))
  return bg, [p for _, p in seeds]


def reference_indices(n_train: int, n_eval: int, n_ref: int, seed: int) -> np.ndarray:
  """Indices of the typicality reference set in the training split: `n_ref` of them, seeded,
  disjoint from the `n_eval` that `evaluation.limit(train, n_eval, seed)` scores as the
  in-distribution train set (this mirrors its draw; nothing is excluded when n_eval < 0 or
  n_eval >= n_train, as limit then scores every training image)."""
  all_idx = np.arange(n_train)
  if 0 <= n_eval < n_train:
    used = np.random.default_rng(seed).choice(n_train, n_eval, replace=False)
    all_idx = np.setdiff1d(all_idx, used)
  if n_ref < 0 or n_ref >= len(all_idx):
    return all_idx
  return np.sort(np.random.default_rng([seed, 1]).choice(all_idx, n_ref, replace=False))


@dataclasses.dataclass(frozen=True)
class BaselineOptions:
  """Settings of the baseline scores (see `evaluate.py --help` for the flags)."""
  families: tuple[str, ...] = tuple(FAMILIES)
  iw_samples: int = 100  # S of log p̂(x) in every likelihood-based score
  chunk_size: int = 16
  batch_size: int = 250
  typicality_batch: int = 10  # M of the batch-level typicality test
  regret_steps: int = 100  # Xiao et al.: 100 Adam steps, lr 2e-4, weight decay 5e-5
  regret_lr: float = 2e-4
  regret_weight_decay: float = 5e-5
  regret_batch_size: int = 32  # examples refit at once (each with its own encoder copy)
  seed: int = 0

  def __post_init__(self):
    # Checked here, so a bad flag fails before minutes of scoring rather than after.
    for name in ("iw_samples", "chunk_size", "batch_size", "typicality_batch",
                 "regret_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"baseline option {name} must be >= 1, got {getattr(self, name)}.")
    if self.regret_steps < 0 or self.regret_lr <= 0 or self.regret_weight_decay < 0:
      raise ValueError(f"likelihood regret needs steps >= 0, lr > 0 and weight decay >= 0; got "
                       f"{self.regret_steps}, {self.regret_lr}, {self.regret_weight_decay}.")

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "BaselineOptions":
    """From `config.baselines`; `evaluation.evaluate` gives them its own chunk size, batch
    size and seed."""
    b = c.baselines
    return cls(iw_samples=b.iw_samples, typicality_batch=b.typicality_batch,
               regret_steps=b.regret_steps, regret_lr=b.regret_lr,
               regret_weight_decay=b.regret_weight_decay, regret_batch_size=b.regret_batch_size)


class BaselineScorer:
  """`extra_scores` for `evaluation.run`: `scorer(tag, images_uint8)` -> a `ScoredSet` of
  every row (plus 'iw_bpd' and '<codec>_bpd' bits/dim) and the seconds each row cost.

  `trained`'s `model_inputs` (its fixed binarization) feeds every model, so the background
  and ensemble models score the very same inputs. The ensemble for WAIC is `trained` plus
  `ensemble` (same data and architecture). `reference_images` (in-distribution training
  images, uint8) give Ĥ for the typicality test. Seconds per row count everything that row
  needs on that set (shared log p̂ passes included, compilation included; the one-off Ĥ pass
  excluded). With `score_cache`, results are stored per set as baselines_<tag>.npz and reused
  when the settings, models and images are the same (`cache.ScoreCache`). `progress` shows a tqdm bar per pass
  (likelihood regret takes minutes per set on a CPU).
  """

  def __init__(self, trained: TrainedModel, options: BaselineOptions,
               background: Optional[TrainedModel] = None,
               ensemble: Sequence[TrainedModel] = (),
               reference_images: Optional[np.ndarray] = None,
               score_cache: Optional[cache.ScoreCache] = None, progress: bool = False):
    self.trained, self.options, self.progress = trained, options, progress
    self.background, self.ensemble = background, list(ensemble)
    self.reference_images = reference_images
    self.cache = score_cache or cache.ScoreCache(None)
    fams = options.families
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
      raise ValueError(f"unknown score families {unknown}; choose from {sorted(FAMILIES)}.")
    if "bg_llr" in fams and background is None:
      raise ValueError("bg_llr needs a background model: pass --background_checkpoint (train "
                       "one with train.py --config.data.perturb_rate=0.2).")
    if "waic" in fams and not self.ensemble:
      raise ValueError("waic needs an ensemble: pass --ensemble_checkpoints with at least one "
                       "more independently trained model of the same architecture.")
    if "complexity" in fams:
      for codec in CODECS:
        check_codec(codec)
    if "typicality" in fams and (reference_images is None or len(reference_images) == 0):
      raise ValueError("typicality needs in-distribution training images for Ĥ.")
    for other, what in [(background, "background")] + [(m, "ensemble") for m in self.ensemble]:
      if other is None:
        continue
      if other.image_shape != trained.image_shape or other.kind != trained.kind:
        raise ValueError(f"{what} model {other.path} takes {other.kind} images of shape "
                         f"{other.image_shape}, the scored model {trained.kind} "
                         f"{trained.image_shape}.")
    for m in self.ensemble:
      if m.model != trained.model or m.config.data.name != trained.config.data.name:
        raise ValueError(f"ensemble model {m.path} differs from {trained.path} in architecture "
                         f"or training data; WAIC needs independently seeded copies of one "
                         f"model.")
    self._fns: dict = {}
    self._entropy: Optional[float] = None

  @property
  def settings(self) -> dict:
    """What evaluation.run records in results.json next to its own settings."""
    d = dataclasses.asdict(self.options)
    d.update(background=self.background.path if self.background else None,
             ensemble=[self.trained.path] + [m.path for m in self.ensemble],
             typicality_entropy_nats=self._entropy,
             reference_examples=None if self.reference_images is None
             else len(self.reference_images))
    return d

  # -- jitted building blocks, one compilation per (architecture, batch shape) --

  def loglik_fn(self, model) -> Callable:
    """The jitted `make_loglik_fn` for `model`'s architecture, built once and reused."""
    sig = ("loglik", model)
    if sig not in self._fns:
      self._fns[sig] = make_loglik_fn(model, self.options.iw_samples, self.options.chunk_size)
    return self._fns[sig]

  @property
  def regret_fn(self) -> LikelihoodRegret:
    """The `LikelihoodRegret` `(params, x, key, steps)` of these options, built once."""
    o = self.options
    if "regret" not in self._fns:
      self._fns["regret"] = LikelihoodRegret(self.trained.model, o.regret_lr, o.iw_samples,
                                             o.chunk_size, o.regret_weight_decay)
    return self._fns["regret"]

  def _batched(self, fn: Callable, params: Any, x: np.ndarray, batch_size: int,
               salt: int = 0, desc: str = "") -> tuple[Any, float]:
    """`batching.map_batches` of `fn(params, xb, key)` with key(seed + salt); returns (numpy
    outputs, seconds)."""
    t0 = time.time()
    out = batching.map_batches(fn, params, x, batch_size,
                               jax.random.key(self.options.seed + salt),
                               mesh=self.trained.mesh, progress=self.progress, desc=desc)
    return out, time.time() - t0

  def log_likelihoods(self, trained: TrainedModel, x: np.ndarray, desc: str = ""
                      ) -> tuple[np.ndarray, float]:
    """`[N]` log p̂(x) (nats) of model input `x` under `trained`, and the seconds it took."""
    return self._batched(self.loglik_fn(trained.model), trained.params, x,
                         self.options.batch_size, desc=desc)

  def entropy(self) -> float:
    """Ĥ: mean -log p̂ over the reference (in-distribution training) images, computed once."""
    if self._entropy is None:
      x = self.trained.model_inputs(self.reference_images)
      lp, _ = self._batched(self.loglik_fn(self.trained.model), self.trained.params, x,
                            self.options.batch_size, salt=1, desc="typicality H-hat")
      self._entropy = float(-np.mean(lp.astype(np.float64)))
    return self._entropy

  # -- caching --

  def _cache_key(self, tag: str, images: np.ndarray) -> str:
    models = [m for m in [self.trained, self.background, *self.ensemble] if m is not None]
    ref = (cache.array_digest(self.reference_images) if self.reference_images is not None
           else None)
    return cache.key_of(kind="competing", options=dataclasses.asdict(self.options), tag=tag,
                        images=cache.array_digest(images), reference=ref,
                        models=[m.digest for m in models])

  def __call__(self, tag: str, images_uint8: np.ndarray) -> ScoredSet:
    name, key = f"baselines_{tag}", self._cache_key(tag, images_uint8)
    arrays = self.cache.get(name, key)
    if arrays is not None:
      if "_entropy" in arrays:  # Ĥ, kept with the set that computed it
        self._entropy = float(arrays["_entropy"])
      return ScoredSet.from_arrays(arrays)
    out = self.compute(images_uint8, tag)
    extra = {"_entropy": np.asarray(self._entropy)} if self._entropy is not None else {}
    self.cache.put(name, key, {**extra, **out.to_arrays()})
    return out

  def compute(self, images_uint8: np.ndarray, tag: str = "") -> ScoredSet:
    """All selected scores of one set of raw images (uint8 `[N, H, W, C]`), uncached; `tag`
    names the set in progress bars."""
    o, fams = self.options, self.options.families
    x = self.trained.model_inputs(images_uint8)
    dims = math.prod(x.shape[1:])
    out: dict[str, np.ndarray] = {}
    sec: dict[str, float] = {}
    lp, t_lp = None, 0.0
    if any(f in fams for f in ("iw_nll", "typicality", "complexity", "bg_llr", "waic")):
      lp, t_lp = self.log_likelihoods(self.trained, x, f"{tag} log p")
      out["iw_bpd"] = np.asarray(-lp / (dims * math.log(2.0)), np.float32)
    if "iw_nll" in fams:
      out["iw_nll"], sec["iw_nll"] = -lp, t_lp
    if "typicality" in fams:
      h = self.entropy()
      out["typicality"] = np.asarray(typicality(-lp, h))
      out["typicality_batch"] = batch_typicality(-lp, h, o.typicality_batch, o.seed)
      sec["typicality"] = sec["typicality_batch"] = t_lp
    if "complexity" in fams:
      for codec in CODECS:
        t0 = time.time()
        out[f"{codec}_bpd"] = compressed_bits_per_dim(x, codec)
        out[f"complexity_{codec}"] = np.asarray(input_complexity(out["iw_bpd"],
                                                                out[f"{codec}_bpd"]))
        sec[f"complexity_{codec}"] = t_lp + time.time() - t0
    if "bg_llr" in fams:
      lp_bg, t_bg = self.log_likelihoods(self.background, x, f"{tag} background log p")
      out["bg_llr"] = np.asarray(background_llr(lp, lp_bg))
      sec["bg_llr"] = t_lp + t_bg
    if "waic" in fams:
      members, t_m = [lp], t_lp
      for i, m in enumerate(self.ensemble, 1):
        lp_m, t = self.log_likelihoods(m, x, f"{tag} ensemble {i} log p")
        members.append(lp_m)
        t_m += t
      out["neg_waic"] = -np.asarray(waic(np.stack(members)))
      sec["neg_waic"] = t_m
    if "regret" in fams:
      refit = lambda p, xb, k: self.regret_fn(p, xb, k, o.regret_steps)
      (reg, _, _), t_r = self._batched(refit, self.trained.params, x, o.regret_batch_size,
                                       salt=2, desc=f"{tag} regret")
      out["regret"], sec["regret"] = reg, t_r
      if np.mean(reg) < 0:  # the refit should raise log p̂(x); on average it lowered it
        print(f"Note: mean likelihood regret {float(np.mean(reg)):.2f} nats < 0: the "
              f"{o.regret_steps}-step encoder refit (lr {o.regret_lr}) lowered log p(x) on "
              f"average instead of raising it; a smaller --regret_lr may suit this model.")
    return ScoredSet({k: np.asarray(v, np.float32) for k, v in out.items()}, sec)


def make_scorer(trained: TrainedModel, scores: str, in_train: np.ndarray, n_eval: int,
                options: BaselineOptions, *, background: Optional[str] = None,
                ensemble: Sequence[str] = (), score_cache: Optional[cache.ScoreCache] = None,
                progress: bool = True) -> Optional[BaselineScorer]:
  """The scorer of the competing scores `scores` ('paper' = none, 'all', or a comma list, see
  `parse_scores`) for `trained`; None for none.

  `background` (bg_llr) and `ensemble` (waic: the other members) are checkpoint paths; when
  not given they are looked up beside the run, where scripts/reproduce_baselines.sh trains
  them (`auxiliary_runs`). 'all' skips, with a note, what has no models; a family asked for
  by name raises instead. Ĥ of the typicality test comes from `in_train` images other than
  the `n_eval` that the evaluation scores (`reference_indices`). `options.families` is set
  from `scores`.
  """
  families = list(parse_scores(scores))
  if not families:
    return None
  explicit = "all" not in [s.strip() for s in scores.split(",")]
  found_bg, found_seeds = auxiliary_runs(trained.path) if trained.path else (None, [])
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
  opts = dataclasses.replace(options, families=tuple(families))
  bg_model = load_model(paths["bg_llr"][0]) if "bg_llr" in families else None
  own = os.path.abspath(trained.path) if trained.path else None  # always a member: not twice
  members = ([load_model(p) for p in dict.fromkeys(paths["waic"]) if os.path.abspath(p) != own]
             if "waic" in families else [])
  reference = None
  if "typicality" in families:  # as many training images as the evaluation scores, none of those
    reference = in_train[reference_indices(len(in_train), n_eval, n_eval, opts.seed)]
  return BaselineScorer(trained, opts, bg_model, members, reference, score_cache=score_cache,
                        progress=progress)
