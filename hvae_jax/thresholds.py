"""The calibrated verdict (`Threshold`, saved as `threshold.json`), bound to its model.

evaluate.py fits a detector (`hvae_jax.detectors`) on in-distribution reference images and
writes it here with the settings its statistics were scored with and the digest of the model
(parameters, config, input kind: `TrainedModel.digest`). A record is used only for that very
model: another model, or another step of the same run, is refused with one line that says
to re-run evaluate.py, so a verdict never rests on a threshold set for other weights.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from hvae_jax import detectors

THRESHOLD_FILE = "threshold.json"
FORMAT = 3  # 3: density rules store their fitted features and density
_FITTED = ("reference", "features_of", "features", "density")  # the detector's fitted state


@dataclasses.dataclass(frozen=True)
class Threshold:
  """A fitted detector and everything its statistics depend on.

  `summary` holds what evaluate.py measured for it: acceptance (of in-distribution test
  images), ood_flagged and driven_by per OOD set, calibrated_on and acceptance_on.
  """
  detector: detectors.Detector
  model_digest: str
  ks: tuple[int, ...]
  iw_samples_elbo: int
  iw_samples_lk: int
  seed: int
  tpr: float
  summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def rule(self) -> str:
    return self.detector.rule

  @property
  def value(self) -> float:
    """The detector's score above which an image is OOD."""
    return self.detector.threshold

  def score_settings(self) -> dict[str, Any]:
    """The `TrainedModel.score` arguments this threshold's statistics were computed with."""
    return {"ks": self.ks, "iw_samples": self.iw_samples_elbo,
            "iw_samples_lk": self.iw_samples_lk, "seed": self.seed}

  def flags(self, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(`[N]` detector score, larger = more OOD; `[N]` bool verdicts, True = OOD; `[N]` the
    statistic (llr_k{k} or elbo) that drove each verdict)."""
    score, driver = self.detector.score(scores)
    return score, score > self.value, driver

  def check_model(self, model_digest: str, path: str) -> None:
    """Refuses (ValueError, one line) a model other than the one this was calibrated for."""
    if model_digest != self.model_digest:
      raise ValueError(mismatch("this threshold", path or "<this model>"))

  def to_json(self) -> dict:
    """The threshold.json record (format `FORMAT`)."""
    fitted = self.detector.to_json()
    return {"format": FORMAT, "detector": self.rule, "value": self.value,
            "model_digest": self.model_digest, "ks": [int(k) for k in self.ks],
            "iw_samples_elbo": int(self.iw_samples_elbo), "iw_samples_lk": int(self.iw_samples_lk),
            "seed": int(self.seed), "tpr": float(self.tpr), **self.summary,
            **{k: v for k, v in fitted.items() if k not in ("rule", "threshold")}}

  def brief(self) -> dict:
    """`to_json` without the fitted arrays (reference values, density): for reports."""
    return {k: v for k, v in self.to_json().items() if k not in _FITTED}

  @classmethod
  def from_json(cls, rec: Mapping) -> "Threshold":
    """A record of `to_json`; ValueError (one line) for another format."""
    if not isinstance(rec, Mapping) or rec.get("format") != FORMAT:
      raise ValueError("written by an older hvae-jax (before the per-layer detectors)")
    fields = {"format", "detector", "value", "threshold", "model_digest", "ks", "iw_samples_elbo",
              "iw_samples_lk", "seed", "tpr", *_FITTED}
    detector = detectors.Detector.from_json({"rule": rec["detector"], "threshold": rec["value"],
                                             **{k: rec[k] for k in _FITTED if k in rec}})
    return cls(detector, rec["model_digest"], tuple(int(k) for k in rec["ks"]),
               int(rec["iw_samples_elbo"]), int(rec["iw_samples_lk"]), int(rec["seed"]),
               float(rec["tpr"]), {k: v for k, v in rec.items() if k not in fields})


def write(out_dir: str, threshold: Threshold) -> None:
  """`out_dir/threshold.json`, replaced atomically (a killed run leaves the old one whole)."""
  path = os.path.join(out_dir, THRESHOLD_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(threshold.to_json(), f, indent=1)
  os.replace(path + ".tmp", path)


def find(path: str) -> Optional[str]:
  """The `threshold.json` of a model folder: in it or in its `eval/` (evaluate.py's output).
  Never a parent folder's, which belongs to some other model."""
  for d in (path, os.path.join(path, "eval")):
    f = os.path.join(d, THRESHOLD_FILE)
    if os.path.isfile(f):
      return f
  return None


def load(path: str, model_digest: str) -> tuple[Optional[Threshold], str]:
  """(the threshold for this model, "") or (None, one line saying why there is none to use)."""
  f = find(path)
  rerun = f"re-run python evaluate.py --checkpoint={path} to calibrate one for this model"
  if f is None:
    return None, f"no calibrated threshold for {path}: {rerun}."
  try:
    with open(f, encoding="utf-8") as fh:
      threshold = Threshold.from_json(json.load(fh))
  except (OSError, ValueError, KeyError, TypeError) as e:
    return None, f"{f} cannot be used ({e}): {rerun}."
  if threshold.model_digest != model_digest:
    return None, mismatch(f, path)
  return threshold, ""


def mismatch(where: str, path: str) -> str:
  return (f"{where} was calibrated for another model (other weights, e.g. an older step of "
          f"this run, or another config): re-run python evaluate.py --checkpoint={path} to "
          f"calibrate one for this model.")
