"""The per-input verdict: detectors fitted and calibrated on in-distribution reference images,
what each accepts and flags, and the `Threshold` written for the default one."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from hvae_jax import detectors, thresholds
from hvae_jax.evaluation.settings import EvalSettings


def fit_detectors(reference: Mapping[str, np.ndarray], settings: EvalSettings
                  ) -> dict[str, detectors.Detector]:
  """Every combined rule and every single k, fitted on one seeded half of the reference
  images' scores and calibrated on the other for `settings.threshold_tpr` acceptance."""
  fit, cal = detectors.halves(len(reference["elbo"]), settings.seed)
  rules = detectors.combined(settings.ks) + [f"llr_k{k}" for k in settings.ks]
  return {rule: detectors.fit(rule, settings.ks, detectors.pick(reference, fit),
                              detectors.pick(reference, cal), settings.threshold_tpr,
                              settings.seed)
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


def threshold_for(detector: detectors.Detector, summary: Mapping, settings: EvalSettings, *,
                  model_digest: str, in_name: str, n_reference: int,
                  n_test: int) -> thresholds.Threshold:
  """The `Threshold` of `detector` for the model `model_digest`, with its measured `summary`
  (`verdict_summary`) and where it was calibrated and measured."""
  measured = {k: v for k, v in summary.items() if k != "threshold"}  # `Threshold.value` has it
  return thresholds.Threshold(
      detector, model_digest, tuple(settings.ks), settings.iw_samples_elbo,
      settings.iw_samples_lk, settings.seed, settings.threshold_tpr,
      {"calibrated_on": f"{in_name}_train: {n_reference - n_reference // 2} reference images "
                        f"(a seeded half; fitted on the other half)",
       "acceptance_on": f"{in_name}_test: all {n_test} images (none fitted or calibrated on)",
       **measured})
