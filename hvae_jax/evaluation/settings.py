"""What an evaluation computes: `config.eval` / `config.baselines` with the options given.

Every option lives in the config (hvae_jax/config.py; short names in `hvae_jax.options`);
`eval_config` lays options over the model's saved config, checking each value under the name
the user typed, and `EvalSettings` / `EvalOptions` are what scoring and the report read.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import ml_collections

from hvae_jax import baselines, cache, checks, detectors
from hvae_jax.options import OPTIONS
from hvae_jax.trained import TrainedModel

def eval_config(trained: TrainedModel, options: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `trained.config` with `options` set: short names of `OPTIONS` or dotted config
  keys (`eval.*`, `baselines.*`); None means not given. Each value is checked under the name
  given (ValueError, one line, before any work). `eval.ks` comes out as the checked tuple
  (every k when empty), and the config's detector falls back to `any_k` over the ks when
  it reads a k they leave out."""
  c = ml_collections.ConfigDict(trained.config.to_dict())
  given: dict[str, tuple[str, Any]] = {}  # config key -> (name given, value)
  for name, value in options.items():
    if value is None:
      continue
    key, check, _ = OPTIONS.get(name, (name, None, None))
    section, _, leaf = key.partition(".")
    if section not in ("eval", "baselines") or leaf not in c[section]:
      raise ValueError(f"unknown evaluation option {name!r}; the options are "
                       f"{sorted(OPTIONS)} or config keys eval.* / baselines.* "
                       f"(hvae_jax/config.py).")
    if key == "eval.ks":
      value = trained.check_ks(value)
    elif check is not None:
      value = check(name, value)
    if key in given and given[key][1] != value:
      raise ValueError(f"{given[key][0]}={given[key][1]!r} and {name}={value!r} disagree: both "
                       f"set {key}; give one.")
    given[key] = (name, value)
  for key, (name, value) in given.items():
    section, leaf = key.split(".")
    try:
      c[section][leaf] = tuple(value) if isinstance(value, list) else value
    except TypeError as e:
      raise ValueError(f"{name}={value!r} is not allowed: {e}") from None
  c.eval.ks = trained.check_ks(c.eval.ks)
  if "eval.detector" not in given and detectors.one_k(c.eval.detector) not in (None, *c.eval.ks):
    # the config's rule reads a k left out: the paper's rule over the ks asked for
    c.eval.detector = "any_k"
  return c


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How the paper's scores are computed and the verdict calibrated; checked on construction."""
  ks: tuple[int, ...]
  iw_samples_elbo: int = 1
  iw_samples_lk: int = 1
  batch_size: int = 500
  max_examples: int = -1  # per data set; -1 = all
  seed: int = 0
  threshold_tpr: float = 0.95  # in-distribution acceptance the threshold is calibrated for
  detector: str = "dose_gmm_elbo"  # the verdict's rule (`detectors`), written to threshold.json
  reference_examples: int = 4000  # training images the detectors are fitted/calibrated on

  def __post_init__(self):
    if not self.ks:
      raise ValueError("ks is empty: give at least one k.")
    for name in ("iw_samples_elbo", "iw_samples_lk", "batch_size"):
      checks.positive_int(name, getattr(self, name))
    checks.example_count("max_examples", self.max_examples)
    checks.non_negative_int("seed", self.seed)
    detectors.check(self.detector, self.ks)  # a known rule; a single k must be scored
    checks.positive_int("reference_examples", self.reference_examples)
    if not 0.0 < self.threshold_tpr < 1.0:
      raise ValueError(f"threshold_tpr={self.threshold_tpr!r} is not allowed: give an "
                       f"acceptance rate in (0, 1).")

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "EvalSettings":
    """From `config.eval` (as `eval_config` leaves it: ks filled in)."""
    e = c.eval
    return cls(ks=tuple(e.ks), iw_samples_elbo=e.iw_samples_elbo, iw_samples_lk=e.iw_samples_lk,
               batch_size=e.batch_size, max_examples=e.max_examples, seed=e.seed,
               threshold_tpr=e.threshold_tpr, detector=e.detector,
               reference_examples=e.reference_examples)

  def cache_key(self, trained: TrainedModel, images) -> str:
    """Everything that changes these scores: model (weights, config), images, settings."""
    # Only what changes a score: each image has its own samples (`image_keys`), so the batch
    # size does not; the images digest covers the subset.
    d = {n: getattr(self, n) for n in ("ks", "iw_samples_elbo", "iw_samples_lk", "seed")}
    return cache.key_of(kind="paper", model=trained.digest, images=cache.array_digest(images),
                        settings=d)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """What is scored besides the paper's scores, and how results are reused."""
  scores: str = "paper"  # 'paper', 'all' or a comma list (baselines.parse_scores)
  background: Optional[str] = None  # bg_llr's model; default: <run>_bg
  ensemble: tuple[str, ...] = ()  # waic's other members; default: <run>_seed<N>
  baseline: baselines.BaselineOptions = baselines.BaselineOptions()
  use_cache: bool = True  # False: rescore, still writing the caches
  progress: bool = True

  def __post_init__(self):
    baselines.parse_scores(self.scores)  # an unknown name fails here, before any work
    object.__setattr__(self, "ensemble", tuple(self.ensemble))

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "EvalOptions":
    """From `config.eval` and `config.baselines`."""
    return cls(scores=c.eval.scores, background=c.baselines.background or None,
               ensemble=tuple(c.baselines.ensemble), use_cache=c.eval.use_cache,
               baseline=baselines.BaselineOptions.from_config(c))
