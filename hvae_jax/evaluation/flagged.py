"""Which images were flagged: per scored set, a CSV of every image's scores and verdict and PNG
grids of the most and the least OOD-looking images by the default detector's score.

Generic in the scores: every entry of a set's scores dict with one number per image becomes a
column, whatever its name, then the default detector's score (`detector_score`, larger = more
OOD), its verdict (`verdict`, True = OOD) and the statistic that drove it (`driven_by`), as
`Threshold.flags` gives them. Files, in the output folder: `<set>_scores.csv`,
`<set>_most_ood.png` and `<set>_least_ood.png`.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from hvae_jax import plots, thresholds

SHOWN = 32  # images per grid
_LABEL_CHARS = 14


def per_image(scores: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
  """The entries of `scores` that hold one number per image of `n`."""
  out = {}
  for name, v in scores.items():
    a = np.asarray(v)
    if a.ndim == 1 and len(a) == n and np.issubdtype(a.dtype, np.number):
      out[name] = a
  return out


def write_csv(path: str, ids: Sequence[str], scores: Mapping[str, Any],
              verdict: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> None:
  """One row per image: `image` (its file or index), every per-image score, and from
  `verdict` = (detector score, flags, driven_by) the last three columns (empty without one).

  Raises:
    ValueError: naming `path`, when it cannot be written.
  """
  columns = per_image(scores, len(ids))
  empty = [""] * len(ids)
  score, flags, driven = verdict if verdict is not None else (empty, empty, empty)
  try:
    with open(path, "w", encoding="utf-8", newline="") as f:
      w = csv.writer(f)
      w.writerow(["image", *columns, "detector_score", "verdict", "driven_by"])
      for i, image in enumerate(ids):
        w.writerow([image, *(repr(float(v[i])) for v in columns.values()),
                    score[i] if verdict is None else repr(float(score[i])),
                    flags[i] if verdict is None else bool(flags[i]), driven[i]])
  except OSError as e:
    raise ValueError(f"cannot write the CSV {path} ({e.strerror or e}); pass a path in a "
                     f"writable folder.") from None


def _label(image_id: str, score: float) -> str:
  name = os.path.basename(image_id) if os.sep in image_id else f"#{image_id}"
  name = name if len(name) <= _LABEL_CHARS else name[:_LABEL_CHARS - 1] + "~"
  return f"{score:.2f}\n{name}"


def write_set(out_dir: str, name: str, images: np.ndarray, ids: Sequence[str],
              scores: Mapping[str, Any], threshold: thresholds.Threshold) -> dict:
  """The CSV and both grids of one set (uint8 `[N, H, W, C]` images, their ids and scores);
  returns the file names and how many images were flagged."""
  score, flags, driven = threshold.flags(scores)
  files = {"csv": f"{name}_scores.csv", "most_ood": f"{name}_most_ood.png",
           "least_ood": f"{name}_least_ood.png"}
  write_csv(os.path.join(out_dir, files["csv"]), ids, scores, (score, flags, driven))
  order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
  k = min(SHOWN, len(order))
  for key, pick, which in (("most_ood", order[:k], "most"),
                           ("least_ood", order[::-1][:k], "least")):
    plots.labelled_grid(images[pick], [_label(str(ids[i]), score[i]) for i in pick],
                        os.path.join(out_dir, files[key]),
                        title=f"{name}: the {k} {which} OOD-looking of {len(order)} images by "
                              f"{threshold.rule} (red: flagged, score > {threshold.value:.3g})",
                        marked=flags[pick])
  return {**files, "flagged": int(np.sum(flags)), "images": len(order)}


def write_all(out_dir: str, threshold: thresholds.Threshold,
              sets: Mapping[str, tuple[np.ndarray, Sequence[str], Mapping[str, Any]]]) -> dict:
  """`write_set` for every `name: (images, ids, scores)`; returns `{name: its files}`."""
  return {name: write_set(out_dir, name, images, ids, scores, threshold)
          for name, (images, ids, scores) in sets.items()}
