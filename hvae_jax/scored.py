"""`ScoredSet`: what every scorer returns for one data set, the paper's and the baselines'."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Protocol

import numpy as np

# How a cache file (`cache.ScoreCache`) stores a score's seconds beside its values.
_SECONDS = "_seconds:"


@dataclasses.dataclass
class ScoredSet:
  """Per-image scores of one data set and the seconds each took.

  `scores`: name -> `[N]` float32 (nats or bits/dim; larger = more OOD or see
  `evaluation.orientation`). `seconds`: name -> seconds that score cost on this set,
  compilation and shared passes included; a score without an entry (bits/dim columns, for
  instance) has no cost of its own.
  """
  scores: dict[str, np.ndarray]
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)

  def to_arrays(self) -> dict[str, np.ndarray]:
    """The flat arrays a cache file holds."""
    return {**self.scores, **{_SECONDS + n: np.asarray(t, np.float64)
                              for n, t in self.seconds.items()}}

  @classmethod
  def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "ScoredSet":
    """The inverse of `to_arrays`; other names that start with '_' are left out."""
    scores = {n: v for n, v in arrays.items() if not n.startswith("_")}
    seconds = {n[len(_SECONDS):]: float(v) for n, v in arrays.items() if n.startswith(_SECONDS)}
    return cls(scores, seconds)


class ExtraScorer(Protocol):
  """Scores computed beside the paper's (`baselines.BaselineScorer`): called once per set."""
  settings: dict  # recorded in results.json next to the evaluation's own settings

  def __call__(self, tag: str, images_uint8: np.ndarray) -> ScoredSet: ...
