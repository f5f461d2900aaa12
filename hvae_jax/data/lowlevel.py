"""OOD sets that differ from a data set only in low-level statistics, made offline.

`<data set>+<shift>` (e.g. `fashion_mnist+noise`) names the data set's test images with one
low-level shift applied: the objects and their classes are the same, only pixel statistics
move. The paper expects LLR^{>k} to be blind to such inputs (its lowest latents, which the
ratio cancels, are the ones that see them), so they test what a low-level statistic such as
the two-sided ELBO test of `detectors` adds. Each shift is fixed a priori, not tuned:

* `noise`: every pixel replaced with probability 0.1 by a uniform value in 0..255 (Ren et
  al. 2019's input perturbation, at half the rate their background model trains with);
* `dim`: intensities halved (a darker exposure);
* `invert`: 255 - x (dark objects on a light background).
"""
from __future__ import annotations

import numpy as np

SHIFTS = ("noise", "dim", "invert")


def split_name(name: str) -> tuple[str, str]:
  """`'fashion_mnist+noise'` -> ('fashion_mnist', 'noise'); '' for a plain data set name."""
  base, _, shift = name.partition("+")
  if shift and shift not in SHIFTS:
    raise ValueError(f"unknown low-level shift {shift!r} in {name!r}: choose one of "
                     f"{', '.join(SHIFTS)} (e.g. {base}+noise).")
  return base, shift


def apply(images: np.ndarray, shift: str, seed: int = 0) -> np.ndarray:
  """uint8 `[N, H, W, C]` images with `shift` applied (seeded, so the set is reproducible)."""
  x = np.asarray(images, np.uint8)
  if shift == "noise":
    rng = np.random.default_rng([seed, 7])
    replace = rng.random(x.shape) < 0.1
    return np.where(replace, rng.integers(0, 256, x.shape), x).astype(np.uint8)
  if shift == "dim":
    return (x // 2).astype(np.uint8)
  if shift == "invert":
    return (255 - x).astype(np.uint8)
  raise ValueError(f"unknown low-level shift {shift!r}: choose one of {', '.join(SHIFTS)}.")
