"""Figures for OOD evaluation (ROC curves, score histograms), learning curves and image grids.

Uses matplotlib's object-oriented API with an explicit Agg canvas (no pyplot), so it never
opens a window, never changes the global backend and is safe in headless jobs and threads.
`image_grid` only needs Pillow.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from sklearn import metrics as skm

__all__ = ["plot_roc", "plot_histograms", "plot_curve", "image_grid", "labelled_grid"]


def _new_figure(figsize: tuple[float, float]):
  """A matplotlib Figure attached to an Agg canvas (imported lazily: only the plots need it)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=figsize, dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _ensure_dir(path: str) -> None:
  d = os.path.dirname(os.fspath(path))
  if d:
    os.makedirs(d, exist_ok=True)


def _finite(x: np.ndarray) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64).reshape(-1)
  return a[np.isfinite(a)]


def plot_roc(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray], path,
             title: str = "") -> None:
  """ROC curves of several scores on one figure, AUROC in the legend; saved as PNG at `path`.

  Args:
    scores_in: name -> [N_in] in-distribution scores, oriented so larger = more OOD.
    scores_out: name -> [N_out] OOD scores (positive class), same names.
    path: output file; parent folders are created.
    title: figure title.

  Uses all examples (no subsampling): the ROC curve does not depend on the class ratio.
  Non-finite scores are dropped for plotting.
  """
  fig = _new_figure((5.5, 5.0))
  ax = fig.add_subplot(1, 1, 1)
  for name in scores_in:
    s_in, s_out = _finite(scores_in[name]), _finite(scores_out[name])
    if s_in.size == 0 or s_out.size == 0:
      continue
    y = np.concatenate([np.zeros(s_in.size), np.ones(s_out.size)])
    s = np.concatenate([s_in, s_out])
    fpr, tpr, _ = skm.roc_curve(y, s)
    ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUROC {skm.roc_auc_score(y, s):.3f})")
  ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
  ax.axhline(0.8, ls=":", lw=0.8, color="grey")  # where FPR80 is read off
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("false positive rate (in-distribution flagged)")
  ax.set_ylabel("true positive rate (OOD flagged)")
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  _ensure_dir(path)
  fig.savefig(path, format="png")


def plot_histograms(scores_in: dict[str, np.ndarray], scores_out: dict[str, np.ndarray], path,
                    title: str = "", bins: int = 50) -> None:
  """One subplot per score with in-distribution vs OOD histograms; saved as PNG at `path`.

  Histograms are normalised to densities (the sets may differ in size) and each subplot uses
  bins shared by both sets, so the two distributions are directly comparable.

  Args:
    scores_in: name -> [N_in] in-distribution scores (any orientation).
    scores_out: name -> [N_out] OOD scores, same names.
    path: output file; parent folders are created.
    title: figure title.
    bins: number of shared bins per score.
  """
  names = list(scores_in)
  n = max(len(names), 1)
  ncols = min(3, n)
  nrows = math.ceil(n / ncols)
  fig = _new_figure((4.0 * ncols, 3.0 * nrows + (0.4 if title else 0.0)))
  for i, name in enumerate(names):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    s_in, s_out = _finite(scores_in[name]), _finite(scores_out[name])
    both = np.concatenate([s_in, s_out])
    if both.size:
      lo, hi = float(both.min()), float(both.max())
      if hi <= lo:  # constant scores: give the single bin a width
        lo, hi = lo - 0.5, hi + 0.5
      edges = np.linspace(lo, hi, bins + 1)
      if s_in.size:
        ax.hist(s_in, bins=edges, density=True, alpha=0.55, label="in-distribution")
      if s_out.size:
        ax.hist(s_out, bins=edges, density=True, alpha=0.55, label="OOD")
      ax.legend(fontsize=8)
    ax.set_title(name, fontsize=10)
    ax.set_ylabel("density")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _ensure_dir(path)
  fig.savefig(path, format="png")


def plot_curve(x: np.ndarray, y: np.ndarray, path, xlabel: str, ylabel: str,
               title: str = "") -> None:
  """One line with markers, e.g. test bits/dim against epoch; saved as PNG at `path`."""
  fig = _new_figure((5.5, 3.8))
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(np.asarray(x), np.asarray(y), marker=".", lw=1.2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  _ensure_dir(path)
  fig.savefig(path, format="png")


def labelled_grid(images: np.ndarray, labels: Sequence[str], path, title: str = "",
                  marked: Optional[Sequence[bool]] = None, ncol: int = 8) -> None:
  """uint8 images `[N, H, W, C]` (C = 1 or 3) in a grid, each with its label beneath (red
  where `marked`), saved as PNG at `path`."""
  x = np.asarray(images)
  n = len(x)
  rows = max(1, math.ceil(n / ncol))
  fig = _new_figure((1.3 * ncol, 1.55 * rows + 0.5))
  for i in range(n):
    ax = fig.add_subplot(rows, ncol, i + 1)
    grey = x.shape[-1] == 1
    ax.imshow(x[i, ..., 0] if grey else x[i], cmap="gray" if grey else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(labels[i], fontsize=6,
                  color="red" if marked is not None and marked[i] else "black")
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  _ensure_dir(path)
  fig.savefig(path, format="png")


def image_grid(images: np.ndarray, path, nrow: Optional[int] = None, padding: int = 2,
               pad_value: int = 255) -> np.ndarray:
  """Tiles images into one grid and saves it as PNG with Pillow.

  Args:
    images: [N, H, W, C] with C in {1, 3}; uint8, or float in [0, 1] (clipped, NaN -> 0).
    path: output file; parent folders are created.
    nrow: images per row (as torchvision's `make_grid`); default ceil(sqrt(N)).
    padding: pixels between images and around the border.
    pad_value: uint8 value of the padding and of empty cells.

  Returns:
    The grid, uint8 of shape [R * (H + p) + p, nrow * (W + p) + p, C] where
    R = ceil(N / nrow) rows and p = padding.
  """
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"images must have shape [N, H, W, C] with C in {{1, 3}}, got {x.shape}")
  n, h, w, c = x.shape
  if n == 0:
    raise ValueError("no images to tile")
  if x.dtype != np.uint8:
    # Floats are taken to be in [0, 1]; round rather than truncate to avoid a darkening bias.
    xf = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    x = np.round(np.clip(xf, 0.0, 1.0) * 255.0).astype(np.uint8)
  ncol = int(nrow) if nrow is not None else math.ceil(math.sqrt(n))
  if ncol <= 0:
    raise ValueError(f"nrow must be positive, got {nrow}")
  ncol = min(ncol, n)
  rows = math.ceil(n / ncol)
  p = int(padding)
  grid = np.full((rows * (h + p) + p, ncol * (w + p) + p, c), pad_value, dtype=np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    y0, x0 = p + r * (h + p), p + q * (w + p)
    grid[y0:y0 + h, x0:x0 + w] = x[i]
  _ensure_dir(path)
  # 2-D uint8 -> mode "L", [H, W, 3] uint8 -> "RGB" (Pillow infers the mode from the array).
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path, format="PNG")
  return grid
