"""Tail p-values of one statistic against its in-distribution reference values.

p-values are smoothed empirical ones: the reference's Gaussian-kernel CDF (Silverman
bandwidth), continuous beyond the largest reference value, so no ties there. Pure numpy/scipy.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special

_CHUNK = 2048  # inputs per block of the [inputs, reference] tail sums: bounded memory
_GRID = 2048  # points of the interpolated tail inside the reference's range


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
  = more OOD), two-sided for every other statistic, the ELBO and the per-layer terms (too
  likely is as atypical as too unlikely)."""
  if name.startswith("llr_k"):
    return -log_tail(reference, s, True)
  two = np.minimum(log_tail(reference, s, True), log_tail(reference, s, False)) + math.log(2)
  return -np.minimum(two, 0.0)
