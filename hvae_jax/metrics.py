"""OOD detection metrics (SPEC section 4): AUROC, AUPRC, FPR80, the OOD field's FPR95 / AUPR-In /
AUPR-Out (OpenOOD conventions), standard errors, thresholds and the oracle choice of k.

Conventions used throughout:

* OOD is the *positive* class (label 1), in-distribution the negative class (label 0).
* Scores are oriented so that *larger = more OOD*. Scores where lower means more OOD (the
  ELBO and the L^{>k} bounds are log-likelihoods) are flipped with `orient[name] = -1`.
* As in the paper, metrics use equally many in-distribution and OOD examples: all of the
  smaller set plus a seeded random subset (without replacement) of the same size from the
  larger one. AUROC does not depend on the class ratio, but AUPRC does, so this keeps AUPRC
  comparable across OOD sets of different sizes.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "ood_metrics", "equal_size_indices", "evaluate_scores",
    "calibrate_threshold", "is_ood", "select_k_by_auroc", "auroc_se", "markdown_table",
]


def _check_scores(x: np.ndarray, what: str) -> np.ndarray:
  """Returns `x` as a 1-D float64 array; raises ValueError if empty, not 1-D or not finite."""
  a = np.asarray(x, dtype=np.float64)
  if a.ndim != 1:
    raise ValueError(f"{what} must be a 1-D array of per-example scores, got shape {a.shape}")
  if a.size == 0:
    raise ValueError(f"{what} is empty: need at least one score")
  bad = ~np.isfinite(a)
  if bad.any():
    # A NaN/inf score usually means a diverged bound; sklearn would either crash or silently
    # rank it, so fail loudly instead.
    raise ValueError(f"{what} has {int(bad.sum())} non-finite (NaN or inf) value(s) "
                     f"out of {a.size}, e.g. at index {int(np.flatnonzero(bad)[0])}")
  return a


def _labels_and_scores(scores_in: np.ndarray, scores_out: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Concatenated labels [N_in + N_out] (OOD = 1) and scores [N_in + N_out]."""
  s_in = _check_scores(scores_in, "scores_in")
  s_out = _check_scores(scores_out, "scores_out")
  y = np.concatenate([np.zeros(s_in.size, np.int64), np.ones(s_out.size, np.int64)])
  return y, np.concatenate([s_in, s_out])


def auroc_se(auroc: float, n_in: int, n_out: int) -> float:
  """Standard error of an AUROC from `n_in` and `n_out` examples (Hanley & McNeil, 1982)."""
  a = float(auroc)
  q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
  var = (a * (1 - a) + (n_out - 1) * (q1 - a * a) + (n_in - 1) * (q2 - a * a)) / (n_in * n_out)
  return float(np.sqrt(max(var, 0.0)))


def ood_metrics(scores_in: np.ndarray, scores_out: np.ndarray) -> dict:
  """AUROC, AUPRC and FPR80 of separating OOD (positive) from in-distribution (negative),
  with the OOD field's FPR95, AUPR-In and AUPR-Out beside them.

  Args:
    scores_in: [N_in] scores of in-distribution examples, larger = more OOD.
    scores_out: [N_out] scores of OOD examples, larger = more OOD.

  Returns:
    {"auroc", "auroc_se", "auprc", "fpr80", "fpr95", "aupr_in", "aupr_out"}, floats.
    * auroc: area under the ROC curve (`roc_auc_score`); ties count one half; auroc_se its
      standard error (`auroc_se`).
    * auprc: area under the precision-recall curve as average precision
      (`average_precision_score`): sum_n (R_n - R_{n-1}) P_n over thresholds, a step-wise
      sum without the optimistic linear interpolation of the trapezoidal rule.
    * fpr80: false positive rate at 80% true positive rate, interpolation-free: thresholds
      are swept from high to low over the distinct score values and fpr80 is the FPR at the
      first (i.e. highest) threshold at which TPR >= 0.8. This is the smallest FPR achievable
      by an actual threshold with TPR >= 0.8 (lower is better).
    * fpr95, aupr_in, aupr_out (OpenOOD's conventions, to compare with other benchmarks):
      fpr95 is the share of OOD examples accepted at the first threshold that accepts >= 95 %
      of in-distribution examples (in-distribution = positive there); aupr_in is the average
      precision with in-distribution as the positive class (scores negated), aupr_out with
      OOD positive (equal to auprc).

  Does no subsampling; see `evaluate_scores` / `equal_size_indices` for the paper's
  equal-size protocol.

  Raises:
    ValueError: if either array is empty, not 1-D or contains NaN/inf.
  """
  y, s = _labels_and_scores(scores_in, scores_out)
  auroc = skm.roc_auc_score(y, s)
  auprc = skm.average_precision_score(y, s)
  # drop_intermediate=False keeps every threshold, so the first TPR >= 0.8 point is exact.
  fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
  # tpr is non-decreasing and ends at 1, so this index always exists.
  i = int(np.argmax(tpr >= 0.8 - 1e-12))
  # In-distribution as the positive class: accepting (low scores) is detecting it.
  fpr_in, tpr_in, _ = skm.roc_curve(1 - y, -s, drop_intermediate=False)
  j = int(np.argmax(tpr_in >= 0.95 - 1e-12))
  n_out = int(y.sum())
  return {"auroc": float(auroc), "auroc_se": auroc_se(auroc, len(y) - n_out, n_out),
          "auprc": float(auprc), "fpr80": float(fpr[i]), "fpr95": float(fpr_in[j]),
          "aupr_in": float(skm.average_precision_score(1 - y, -s)), "aupr_out": float(auprc)}


def equal_size_indices(n_in: int, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Index arrays selecting equally many in-distribution and OOD examples.

  All of the smaller set is kept; from the larger set a seeded random subset of the same size
  is drawn without replacement. Returning indices (rather than scores) lets one draw be
  applied to several scores of the same examples, so all scores are compared on the same
  images.

  Args:
    n_in: number of in-distribution examples (> 0).
    n_out: number of OOD examples (> 0).
    seed: seed of the random subset (numpy `default_rng`).

  Returns:
    (idx_in, idx_out): two sorted int64 arrays, both of length m = min(n_in, n_out).
  """
  n_in, n_out = int(n_in), int(n_out)
  if n_in <= 0 or n_out <= 0:
    raise ValueError(f"need at least one example per class, got n_in={n_in}, n_out={n_out}")
  m = min(n_in, n_out)
  rng = np.random.default_rng(seed)

  def pick(n: int) -> np.ndarray:
    if n == m:
      return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)

  return pick(n_in), pick(n_out)


def evaluate_scores(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray],
                    seed: int = 0, orient: Optional[dict[str, int]] = None
                    ) -> dict[str, dict]:
  """`ood_metrics` for several scores of the same examples, on one shared equal-size subset.

  Args:
    scores_in: name -> [N_in] scores of the in-distribution examples (same N_in for all).
    scores_out: name -> [N_out] scores of the OOD examples (same N_out, same names).
    seed: seed of the equal-size subsample; the same indices are used for every score so the
      metrics of different scores are computed on the same examples.
    orient: optional name -> +1 / -1. A score with -1 is negated first (e.g. the ELBO or
      L^{>k}, where lower = more OOD); missing names default to +1.

  Returns:
    name -> {"auroc", "auprc", "fpr80"}, in the order of `scores_in`.
  """
  orient = dict(orient or {})
  missing = [n for n in scores_in if n not in scores_out]
  if missing:
    raise ValueError(f"scores missing from scores_out: {missing}")
  if not scores_in:
    raise ValueError("no scores given")
  names = list(scores_in)
  n_in = {n: len(np.asarray(scores_in[n])) for n in names}
  n_out = {n: len(np.asarray(scores_out[n])) for n in names}
  if len(set(n_in.values())) != 1 or len(set(n_out.values())) != 1:
    raise ValueError(f"all scores must cover the same examples; got in-distribution sizes "
                     f"{n_in} and OOD sizes {n_out}")
  idx_in, idx_out = equal_size_indices(n_in[names[0]], n_out[names[0]], seed)
  results = {}
  for n in names:
    sign = orient.get(n, 1)
    if sign not in (1, -1):
      raise ValueError(f"orient[{n!r}] must be +1 or -1, got {sign!r}")
    s_in = sign * np.asarray(scores_in[n], dtype=np.float64)[idx_in]
    s_out = sign * np.asarray(scores_out[n], dtype=np.float64)[idx_out]
    try:
      results[n] = ood_metrics(s_in, s_out)
    except ValueError as e:
      raise ValueError(f"score {n!r}: {e}") from e
  return results


def calibrate_threshold(scores_in_val: np.ndarray, tpr: float = 0.95) -> float:
  """Decision threshold that accepts a fraction `tpr` of in-distribution validation data.

  Here "TPR" is the *in-distribution acceptance rate* (in-distribution treated as the class
  to keep), not the OOD true positive rate used by `ood_metrics`. The threshold is the
  empirical `tpr`-quantile without interpolation ("inverted CDF"): the smallest observed
  score t such that at least a fraction `tpr` of `scores_in_val` are <= t. Examples with
  score > t are flagged as OOD (`is_ood`), so at least `tpr` of the validation set is
  accepted and it needs no OOD labels.

  Args:
    scores_in_val: [N] in-distribution scores (larger = more OOD), held out from training
      if possible.
    tpr: target acceptance rate in (0, 1].

  Returns:
    The threshold, a float.
  """
  if not 0.0 < float(tpr) <= 1.0:
    raise ValueError(f"tpr must be in (0, 1], got {tpr}")
  s = _check_scores(scores_in_val, "scores_in_val")
  return float(np.quantile(s, tpr, method="inverted_cdf"))


def is_ood(scores: np.ndarray, threshold: float) -> np.ndarray:
  """[N] bool: True where a score (larger = more OOD) exceeds the threshold, i.e. flagged OOD."""
  return np.asarray(scores) > threshold


def _k_of(name: str) -> int:
  """The k in a name like `llr_k2` (or `llr_k2_s1000`); a large number if there is none."""
  m = re.search(r"_k(\d+)", name)
  return int(m.group(1)) if m else np.iinfo(np.int64).max


def select_k_by_auroc(results: dict[str, dict], prefix: str = "llr_k") -> tuple[str, float]:
  """The score among names starting with `prefix` with the highest AUROC (ties: smaller k).

  This is the paper's choice of k, which looks at the OOD test set: an oracle, optimistic
  estimate of what a practitioner without OOD data would get; the per-input detectors
  (`hvae_jax.detectors`) need no such choice.

  Args:
    results: name -> metrics dict with an "auroc" entry (output of `evaluate_scores`).
    prefix: only names starting with this are considered.

  Returns:
    (best_name, its AUROC).
  """
  cands = [n for n in results if n.startswith(prefix)]
  if not cands:
    raise ValueError(f"no score name starts with {prefix!r}; have {list(results)}")
  best = min(cands, key=lambda n: (-results[n]["auroc"], _k_of(n), n))
  return best, float(results[best]["auroc"])


def _cell(v, floatfmt: str) -> str:
  """One markdown table cell: floats formatted, None empty, pipes escaped."""
  if v is None:
    return ""
  if isinstance(v, (float, np.floating)):
    return format(float(v), floatfmt)
  if isinstance(v, (np.integer, np.bool_)):
    v = v.item()
  return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict], columns: list[str], floatfmt: str = ".3f") -> str:
  """A GitHub-flavoured markdown table of `rows` (dicts) with the given `columns`.

  Floats (including numpy floats) use `floatfmt`; missing keys and None give empty cells.
  Returns the table as a string without a trailing newline.
  """
  head = "| " + " | ".join(_cell(c, floatfmt) for c in columns) + " |"
  sep = "|" + "|".join("---" for _ in columns) + "|"
  body = ["| " + " | ".join(_cell(r.get(c), floatfmt) for c in columns) + " |" for r in rows]
  return "\n".join([head, sep] + body)
