"""The calibrated verdict on disk (`threshold.json`), bound to the model it was calibrated for.

evaluate.py fits a detector (`hvae_jax.detectors`) on in-distribution reference images and
writes it here with the settings its statistics were scored with and the digest of the model
(parameters, config, input kind: `TrainedModel.digest`). A record is used only for that very
model: another model, or another step of the same run, is refused with one line that says
to re-run evaluate.py, so a verdict never rests on a threshold set for other weights.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from hvae_jax import detectors

THRESHOLD_FILE = "threshold.json"
FORMAT = 2


def record(detector: detectors.Detector, *, model_digest: str, ks, iw_samples_elbo: int,
           iw_samples_lk: int, seed: int, tpr: float, **summary: Any) -> dict:
  """The JSON record of a fitted detector and everything its statistics depend on."""
  return {"format": FORMAT, "detector": detector.rule, "value": detector.threshold,
          "model_digest": model_digest, "ks": [int(k) for k in ks],
          "iw_samples_elbo": int(iw_samples_elbo), "iw_samples_lk": int(iw_samples_lk),
          "seed": int(seed), "tpr": float(tpr), **summary,
          "reference": detector.to_json()["reference"]}


def score_settings(rec: Mapping) -> dict[str, Any]:
  """The `TrainedModel.score` arguments a record's statistics were computed with."""
  return {"ks": tuple(rec["ks"]), "iw_samples": int(rec["iw_samples_elbo"]),
          "iw_samples_lk": int(rec["iw_samples_lk"]), "seed": int(rec["seed"])}


def to_detector(rec: Mapping) -> detectors.Detector:
  return detectors.Detector.from_json({"rule": rec["detector"], "threshold": rec["value"],
                                       "reference": rec["reference"]})


def write(out_dir: str, rec: Mapping) -> None:
  """`out_dir/threshold.json`, replaced atomically (a killed run leaves the old one whole)."""
  path = os.path.join(out_dir, THRESHOLD_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(rec, f, indent=1)
  os.replace(path + ".tmp", path)


def find(path: str) -> Optional[str]:
  """The `threshold.json` of a model folder: in it or in its `eval/` (evaluate.py's output).
  Never a parent folder's, which belongs to some other model."""
  for d in (path, os.path.join(path, "eval")):
    f = os.path.join(d, THRESHOLD_FILE)
    if os.path.isfile(f):
      return f
  return None


def load(path: str, model_digest: str) -> tuple[Optional[dict], str]:
  """(the record for this model, "") or (None, one line saying why there is none to use)."""
  f = find(path)
  rerun = f"re-run python evaluate.py --checkpoint={path} to calibrate one for this model"
  if f is None:
    return None, f"no calibrated threshold for {path}: {rerun}."
  try:
    with open(f, encoding="utf-8") as fh:
      rec = json.load(fh)
  except (OSError, ValueError) as e:
    return None, f"{f} cannot be read ({e}): {rerun}."
  if not isinstance(rec, dict) or rec.get("format") != FORMAT:
    return None, f"{f} was written by an older hvae-jax (no per-input detector): {rerun}."
  return (rec, "") if rec.get("model_digest") == model_digest else (None, mismatch(f, path))


def mismatch(where: str, path: str) -> str:
  return (f"{where} was calibrated for another model (other weights, e.g. an older step of "
          f"this run, or another config): re-run python evaluate.py --checkpoint={path} to "
          f"calibrate one for this model.")
