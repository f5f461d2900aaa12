"""Per-input OOD verdicts: tests of an image's statistics against in-distribution references.

The statistics of an image x are the model's scores (`hvae_jax.ood`): the ELBO, LLR^{>k} for
every k, and the per-layer terms of every pass (`stat_names`: recon, kl_l1, ..., recon_k1,
kl_k1_l2, ...). A sum over layers (ELBO, L^{>k}, LLR^{>k}) can hide an input that is unusual
in one layer and ordinary, or unusually likely, in another; the per-layer terms do not. A
detector is fitted on the statistics of in-distribution *reference* images (one fold) and its
threshold calibrated on another fold, so that a target share of in-distribution images is
accepted. Rules (each a row of Table 2):

* `any_k`: the paper's rule (section 5, "Selection of k"). For every k the upper-tail p-value
  p_k(x) of LLR^{>k}(x) under that k's reference distribution; the input is as surprising as
  its most surprising k, score = max_k -log p_k(x), and that k decides. The threshold on the
  maximum is calibrated on held-out in-distribution images, which corrects for testing
  several k exactly (Bonferroni, flag if min_k p_k < alpha / K, only bounds it).
* `any_k_typ`: `any_k` plus a two-sided test of the ELBO (per-input typicality).
* `any_stat`: `any_k` over every statistic: each LLR^{>k} (upper tail) and each per-layer
  term (two-sided), combined by the maximum as any_k combines k.
* `dose_<density>[_elbo][_std]`: DoSE (Morningstar et al., 2021): a one-class density
  (`densities`: mcd, gmm or kde) over the per-layer terms of every pass (`_elbo`: of the ELBO
  pass only), the statistics that carry no information on the reference (constant, or a copy
  of another) dropped, each Yeo-Johnson transformed and standardized (`_std`: standardized
  only). Two-sided in every term, and it reads how the terms vary together.
* `joint`: a robust Gaussian over (ELBO, LLR^{>1}, ..., LLR^{>K}); `joint_k{k}`: over the
  ELBO and one LLR^{>k}.
* `llr_k{k}`: one k, thresholded on LLR^{>k} itself (the paper's Table 2 rows).

Every verdict names the statistic that drove it: among the rule's statistics, the one with
the smallest tail p-value (`tails`); for the density rules, the one farthest from what the
others predict (`densities.Features.residuals`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Mapping, Optional, Sequence

import numpy as np

from hvae_jax import densities, metrics, stat_names, tails

RULES = ("any_k", "any_k_typ", "any_stat", "joint")
DOSE = tuple(f"dose_{kind}{part}{std}" for kind in densities.KINDS for part in ("", "_elbo")
             for std in ("", "_std"))
_SINGLE = re.compile(r"llr_k(\d+)$")
_JOINT_K = re.compile(r"joint_k(\d+)$")
_DOSE = re.compile(r"dose_(mcd|gmm|kde)(_elbo)?(_std)?$")


def check_rule(rule: str) -> str:
  """`rule` if it names a detector, else one ValueError that lists them."""
  if rule not in RULES and not (_SINGLE.match(rule) or _JOINT_K.match(rule) or _DOSE.match(rule)):
    raise ValueError(f"unknown detector {rule!r}: choose one of {', '.join(RULES)}, "
                     f"dose_<mcd|gmm|kde>[_elbo][_std], joint_k<k> or llr_k<k> (one k, e.g. "
                     f"dose_gmm, joint_k1, llr_k1).")
  return rule


def one_k(rule: str) -> Optional[int]:
  """The k a one-k rule (joint_k<k>, llr_k<k>) reads; None for rules over every k."""
  m = _SINGLE.match(check_rule(rule)) or _JOINT_K.match(rule)
  return int(m.group(1)) if m else None


def check(rule: str, ks: Sequence[int]) -> str:
  """`rule` if it names a detector whose k (if any) is among the scored `ks`."""
  k = one_k(rule)
  if k is not None and k not in ks:
    raise ValueError(f"detector {rule} needs k={k}, but only k={list(ks)} are scored.")
  return rule


def combined(ks: Sequence[int]) -> list[str]:
  """The combined rules for the scored `ks`: Table 2's per-input rows."""
  return list(RULES) + [f"joint_k{k}" for k in ks] + list(DOSE)


def statistics(rule: str, ks: Sequence[int], available: Sequence[str] = ()) -> tuple[str, ...]:
  """The per-image scores `rule` reads, for the scored `ks`; rules over the per-layer terms
  take the terms among the `available` score names."""
  k = one_k(rule)
  if k is not None:
    if k not in ks:
      raise ValueError(f"detector {rule} needs k={k}, but only k={list(ks)} are scored.")
    return (f"llr_k{k}",) if _SINGLE.match(rule) else ("elbo", f"llr_k{k}")
  llr = tuple(f"llr_k{k}" for k in ks)
  if rule in ("any_k", "any_k_typ", "joint"):
    return llr if rule == "any_k" else ("elbo",) + llr
  dose = _DOSE.match(rule)
  elbo_pass_only = bool(dose and dose.group(2))
  terms = tuple(n for n in available if stat_names.is_term(n)
                and not (elbo_pass_only and stat_names.pass_of(n) > 0))
  if not terms:
    raise ValueError(f"detector {rule} reads the per-layer terms (recon, kl_l1, ...), but the "
                     f"scores have none: rescore them with this version (--no_cache).")
  return terms if dose else llr + terms


def _stack(names: Sequence[str], scores: Mapping[str, np.ndarray], rule: str) -> np.ndarray:
  """`[N, len(names)]` float64 statistics; one ValueError for a missing or non-finite one."""
  missing = [n for n in names if n not in scores]
  if missing:
    raise ValueError(f"detector {rule} needs the scores {missing}; score with every k "
                     f"it was fitted on.")
  x = np.stack([np.asarray(scores[n], np.float64) for n in names], axis=1)
  bad = ~np.all(np.isfinite(x), axis=1)
  if bad.any():  # NaN > threshold is False: a diverged score would pass as in-distribution
    first = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{int(bad.sum())} of {len(x)} images have non-finite (NaN or inf) "
                     f"statistics {list(names)}, e.g. image {first}: the model's "
                     f"bound diverged there; no verdict is given for them.")
  return x


@dataclasses.dataclass
class Detector:
  """A fitted rule: `reference` maps each statistic to its `[n]` reference values (for the
  tail p-values); density rules add the statistics they kept (`features_of`), their
  `features` and fitted `density`."""
  rule: str
  reference: dict[str, np.ndarray]
  threshold: float = math.inf
  features_of: tuple[str, ...] = ()
  features: Optional[densities.Features] = None
  density: Optional[densities.Density] = None

  @property
  def statistics(self) -> tuple[str, ...]:
    return tuple(self.reference)

  def fit_density(self, seed: int = 0) -> "Detector":
    """Fits the density of a density rule on `reference` (no-op for the tail rules)."""
    dose = _DOSE.match(self.rule)
    if not dose and not self.rule.startswith("joint"):
      return self
    x = _stack(self.statistics, self.reference, self.rule)
    kind, transform = ("mcd", "standard") if not dose else (
        dose.group(1), "standard" if dose.group(3) else "yeo-johnson")
    self.features_of = (densities.informative(x, self.statistics) if dose
                        else self.statistics)
    x = _stack(self.features_of, self.reference, self.rule)
    self.features = densities.Features.fit(x, transform)
    self.density = densities.Density.fit(kind, self.features(x), seed)
    return self

  def score(self, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(`[N]` score, larger = more OOD; `[N]` name of the statistic that drove it)."""
    names = self.features_of or self.statistics
    x = _stack(names, scores, self.rule)
    if _SINGLE.match(self.rule):
      return x[:, 0], np.repeat(np.asarray(names), len(x))
    if self.density is not None:
      z = self.features(x)
      driver = np.asarray(names)[np.argmax(self.features.residuals(z), axis=1)]
      return self.density.score(z), driver
    surprise = np.stack([tails.surprise(n, self.reference[n], x[:, i])
                         for i, n in enumerate(names)], axis=1)
    return surprise.max(axis=1), np.asarray(names)[np.argmax(surprise, axis=1)]

  def flags(self, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(`[N]` bool, True = OOD: score above the calibrated threshold; `[N]` driver names)."""
    s, driver = self.score(scores)
    return s > self.threshold, driver

  def to_json(self) -> dict:
    out = {"rule": self.rule, "threshold": self.threshold,
           "reference": {n: [float(v) for v in r] for n, r in self.reference.items()}}
    if self.density is not None:
      out.update(features_of=list(self.features_of), features=self.features.to_json(),
                 density=self.density.to_json())
    return out

  @classmethod
  def from_json(cls, d: Mapping) -> "Detector":
    has = d.get("density") is not None
    return cls(d["rule"], {n: np.asarray(v, np.float64) for n, v in d["reference"].items()},
               float(d["threshold"]), tuple(d.get("features_of", ())),
               densities.Features.from_json(d["features"]) if has else None,
               densities.Density.from_json(d["density"]) if has else None)


def fit(rule: str, ks: Sequence[int], reference: Mapping[str, np.ndarray],
        calibration: Mapping[str, np.ndarray], tpr: float = 0.95, seed: int = 0) -> Detector:
  """`rule` fitted on `reference` scores and its threshold set to accept a share `tpr` of
  the `calibration` scores (two disjoint sets of in-distribution images)."""
  names = statistics(rule, ks, tuple(reference))
  for what, s in (("reference", reference), ("calibration", calibration)):
    bad = [n for n in names if n not in s or not np.all(np.isfinite(s[n])) or len(s[n]) < 2]
    if bad:
      raise ValueError(f"detector {rule}: the {what} images' {bad} are missing, non-finite or "
                       f"fewer than 2; score at least 4 in-distribution reference images.")
  d = Detector(rule, {n: np.asarray(reference[n], np.float64) for n in names}).fit_density(seed)
  s, _ = d.score(calibration)
  d.threshold = metrics.calibrate_threshold(s, tpr)
  return d


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Two disjoint seeded halves of `n` reference images: fit on the first, calibrate on the
  second."""
  if n < 4:
    raise ValueError(f"fitting a detector needs at least 4 in-distribution reference images, "
                     f"got {n}; raise reference_examples.")
  perm = np.random.default_rng([seed, 2]).permutation(n)
  return np.sort(perm[:n // 2]), np.sort(perm[n // 2:])


def pick(scores: Mapping[str, np.ndarray], idx: np.ndarray,
         names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
  """The rows `idx` of every score in `names` (default all)."""
  return {n: np.asarray(scores[n])[idx] for n in (names or scores)}
