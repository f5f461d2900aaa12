"""Per-input OOD verdicts: tests of an image's statistics against in-distribution references.

The statistics of an image x are the model's scores ELBO(x) and LLR^{>k}(x) for every k
(`hvae_jax.ood`). A detector is fitted on the statistics of in-distribution *reference* images
(one fold) and its threshold calibrated on another fold, so that a target share of
in-distribution images is accepted. Rules (each a row of Table 2):

* `any_k`: the paper's rule (section 5, "Selection of k"). For every k the upper-tail p-value
  p_k(x) of LLR^{>k}(x) under that k's reference distribution; the input is as surprising as
  its most surprising k, score = max_k -log p_k(x), and that k decides. The threshold on the
  maximum is calibrated on held-out in-distribution images, which corrects for testing
  several k exactly (Bonferroni, flag if min_k p_k < alpha / K, only bounds it).
* `any_k_typ`: `any_k` plus a two-sided test of the ELBO (per-input typicality): catches
  inputs that differ from the data only in low-level statistics, where LLR^{>k} is blind.
* `joint`: DoSE-style (Morningstar et al., 2021): a density fitted on the reference vectors
  (ELBO, LLR^{>1}, ..., LLR^{>K}), score = -log density up to constants. The density is a
  robust Gaussian (minimum covariance determinant, scikit-learn's MinCovDet), score = its
  squared Mahalanobis distance: with a few hundred reference images it generalizes where a
  kernel density is noisy, in-distribution outliers do not inflate it, and it uses how the
  statistics vary together, not only each margin. Two-sided in every statistic, so the ELBO
  in it is a typicality test.
* `joint_k{k}`: `joint` over the ELBO and one LLR^{>k}: a statistic that does not separate
  adds false alarms to any combination, so a model whose k is known can drop the others.
* `llr_k{k}`: one k, thresholded on LLR^{>k} itself (the paper's Table 2 rows).

Every verdict names the statistic that drove it: the k (or the ELBO) with the smallest tail
p-value. p-values are smoothed empirical ones, the reference's Gaussian-kernel CDF
(Silverman bandwidth): continuous beyond the largest reference value, so no ties there.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import special
from sklearn.covariance import MinCovDet

from hvae_jax import metrics

RULES = ("any_k", "any_k_typ", "joint")
_SINGLE = re.compile(r"llr_k(\d+)$")
_JOINT_K = re.compile(r"joint_k(\d+)$")
_CHUNK = 2048  # inputs per block of the [inputs, reference] tail sums: bounded memory
_GRID = 2048  # points of the interpolated tail inside the reference's range


def check_rule(rule: str) -> str:
  """`rule` if it names a detector, else one ValueError that lists them."""
  if rule not in RULES and not (_SINGLE.match(rule) or _JOINT_K.match(rule)):
    raise ValueError(f"unknown detector {rule!r}: choose one of {', '.join(RULES)}, joint_k<k> "
                     f"or llr_k<k> (one k, e.g. joint_k1, llr_k1).")
  return rule


def one_k(rule: str) -> Optional[int]:
  """The k a one-k rule (joint_k<k>, llr_k<k>) reads; None for rules over every k."""
  m = _SINGLE.match(check_rule(rule)) or _JOINT_K.match(rule)
  return int(m.group(1)) if m else None


def combined(ks: Sequence[int]) -> list[str]:
  """The combined rules for the scored `ks`: Table 2's per-input rows."""
  return list(RULES) + [f"joint_k{k}" for k in ks]


def statistics(rule: str, ks: Sequence[int]) -> tuple[str, ...]:
  """The per-image scores `rule` reads, for the scored `ks`."""
  k = one_k(rule)
  if k is not None:
    if k not in ks:
      raise ValueError(f"detector {rule} needs k={k}, but only k={list(ks)} are scored.")
    return (f"llr_k{k}",) if _SINGLE.match(rule) else ("elbo", f"llr_k{k}")
  llr = tuple(f"llr_k{k}" for k in ks)
  return llr if rule == "any_k" else ("elbo",) + llr


def _bandwidth(r: np.ndarray) -> float:
  """Silverman's rule of thumb for a 1-D Gaussian kernel (robust to a heavy tail)."""
  iqr = np.subtract(*np.percentile(r, [75, 25]))
  spread = min(np.std(r), iqr / 1.349) if iqr > 0 else np.std(r)
  return float(0.9 * max(spread, 1e-6) * len(r) ** -0.2)


def _log_tail_exact(r: np.ndarray, h: float, s: np.ndarray, upper: bool) -> np.ndarray:
  out = np.empty(len(s))
  for i in range(0, len(s), _CHUNK):
    z = (r[None, :] - s[i:i + _CHUNK, None]) / h
    out[i:i + _CHUNK] = special.logsumexp(special.log_ndtr(z if upper else -z), axis=1)
  return out - math.log(len(r))


@functools.lru_cache(maxsize=64)
def _tail_table(reference_bytes: bytes, upper: bool) -> tuple[np.ndarray, float, np.ndarray,
                                                             np.ndarray]:
  """(reference, bandwidth, grid, log tail on the grid) of one reference, computed once."""
  r = np.frombuffer(reference_bytes, np.float64)
  h = _bandwidth(r)
  grid = np.linspace(r.min() - 4 * h, r.max() + 4 * h, _GRID)
  return r, h, grid, _log_tail_exact(r, h, grid, upper)


def log_tail(reference: np.ndarray, s: np.ndarray, upper: bool = True) -> np.ndarray:
  """`[N]` log P(R >= s) (upper) or log P(R <= s) under the Gaussian-kernel smoothing of the
  `reference` values: a continuous empirical tail probability. Inside the reference's range
  it is interpolated from a fine grid (it is smooth there; the grid is kept per reference);
  outside, computed exactly."""
  r, h, grid, table = _tail_table(np.asarray(reference, np.float64).tobytes(), bool(upper))
  s = np.asarray(s, np.float64)
  out = np.interp(s, grid, table)
  outside = (s < grid[0]) | (s > grid[-1])
  out[outside] = _log_tail_exact(r, h, s[outside], upper)
  return out


def surprise(name: str, reference: np.ndarray, s: np.ndarray) -> np.ndarray:
  """`[N]` -log p of statistic `name` against its reference: upper tail for LLR^{>k} (larger
  = more OOD), two-sided for the ELBO (too likely is as atypical as too unlikely)."""
  if name == "elbo":
    two = np.minimum(log_tail(reference, s, True), log_tail(reference, s, False)) + math.log(2)
    return -np.minimum(two, 0.0)
  return -log_tail(reference, s, True)


@dataclasses.dataclass
class Detector:
  """A fitted rule: `reference` maps each statistic to its `[n]` reference values."""
  rule: str
  reference: dict[str, np.ndarray]
  threshold: float = math.inf
  _density: Optional[MinCovDet] = dataclasses.field(default=None, init=False, repr=False,
                                                    compare=False)

  @property
  def statistics(self) -> tuple[str, ...]:
    return tuple(self.reference)

  def _stack(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
    missing = [n for n in self.statistics if n not in scores]
    if missing:
      raise ValueError(f"detector {self.rule} needs the scores {missing}; score with every k "
                       f"it was fitted on.")
    x = np.stack([np.asarray(scores[n], np.float64) for n in self.statistics], axis=1)
    bad = ~np.all(np.isfinite(x), axis=1)
    if bad.any():  # NaN > threshold is False: a diverged score would pass as in-distribution
      first = int(np.flatnonzero(bad)[0])
      raise ValueError(f"{int(bad.sum())} of {len(x)} images have non-finite (NaN or inf) "
                       f"statistics {list(self.statistics)}, e.g. image {first}: the model's "
                       f"bound diverged there; no verdict is given for them.")
    return x

  def _joint(self, x: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance under the reference's robust Gaussian (fitted once)."""
    if self._density is None:
      self._density = MinCovDet(random_state=0).fit(self._stack(self.reference))
    return self._density.mahalanobis(x)

  def score(self, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(`[N]` score, larger = more OOD; `[N]` name of the statistic that drove it)."""
    x = self._stack(scores)
    names = np.asarray(self.statistics)
    if _SINGLE.match(self.rule):
      return x[:, 0], np.repeat(names, len(x))
    tails = np.stack([surprise(n, self.reference[n], x[:, i])
                      for i, n in enumerate(self.statistics)], axis=1)
    driver = names[np.argmax(tails, axis=1)]
    joint = self.rule.startswith("joint")
    return (self._joint(x) if joint else tails.max(axis=1)), driver

  def flags(self, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(`[N]` bool, True = OOD: score above the calibrated threshold; `[N]` driver names)."""
    s, driver = self.score(scores)
    return s > self.threshold, driver

  def to_json(self) -> dict:
    return {"rule": self.rule, "threshold": self.threshold,
            "reference": {n: [float(v) for v in r] for n, r in self.reference.items()}}

  @classmethod
  def from_json(cls, d: Mapping) -> "Detector":
    return cls(d["rule"], {n: np.asarray(v, np.float64) for n, v in d["reference"].items()},
               float(d["threshold"]))


def fit(rule: str, ks: Sequence[int], reference: Mapping[str, np.ndarray],
        calibration: Mapping[str, np.ndarray], tpr: float = 0.95) -> Detector:
  """`rule` fitted on `reference` scores and its threshold set to accept a share `tpr` of
  the `calibration` scores (two disjoint sets of in-distribution images)."""
  names = statistics(rule, ks)
  for what, s in (("reference", reference), ("calibration", calibration)):
    bad = [n for n in names if n not in s or not np.all(np.isfinite(s[n])) or len(s[n]) < 2]
    if bad:
      raise ValueError(f"detector {rule}: the {what} images' {bad} are missing, non-finite or "
                       f"fewer than 2; score at least 4 in-distribution reference images.")
  d = Detector(rule, {n: np.asarray(reference[n], np.float64) for n in names})
  s, _ = d.score(calibration)
  d.threshold = metrics.calibrate_threshold(s, tpr)
  return d


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Two disjoint seeded halves of `n` reference images: fit on the first, calibrate on the
  second."""
  if n < 4:
    raise ValueError(f"fitting a detector needs at least 4 in-distribution reference images, "
                     f"got {n}; raise max_examples.")
  perm = np.random.default_rng([seed, 2]).permutation(n)
  return np.sort(perm[:n // 2]), np.sort(perm[n // 2:])


def pick(scores: Mapping[str, np.ndarray], idx: np.ndarray,
         names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
  """The rows `idx` of every score in `names` (default all)."""
  return {n: np.asarray(scores[n])[idx] for n in (names or scores)}
