"""OOD sets that differ from a data set only in low-level statistics, made offline.

`<data set>+<shift>` (e.g. `fashion_mnist+noise`) names the data set's test images with one
low-level shift applied: the objects and their classes are the same, only pixel statistics
move. The paper expects LLR^{>k} to be blind to such inputs (its lowest latents, which the
ratio cancels, are the ones that see them), so they test what a low-level statistic such as
the two-sided ELBO test of `detectors` adds. Each shift is fixed a priori, not tuned:

* `noise`: every pixel replaced with probability 0.1 by a uniform value in 0..255 (Ren et
  al. 2019's input perturbation, at half the rate their background model trains with);
* `dim`: intensities halved (a darker exposure);
* `invert`: 255 - x (dark objects on a light background);
* `constant`: every pixel of an image one grey level, drawn uniformly in 0..255 per image;
* `uniform`: every pixel uniform in 0..255.

`VALIDATION` is a second family, used only to choose the default detector (docs/RESULTS.md,
"Choosing the default detector"), made from training images: `blur` (Gaussian, sigma 1 px),
`translate` (6 px right and down, zero fill), `zoomout` (half size, centred), `patchshuffle`
(the 4 x 4 grid of patches permuted), `flipud` (upside down), `texture` (one quarter-size
patch of the image tiled), `speckle` (binary noise at the image's mean intensity).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SHIFTS = ("noise", "dim", "invert", "constant", "uniform")
VALIDATION = ("blur", "translate", "zoomout", "patchshuffle", "flipud", "texture", "speckle")


def split_name(name: str) -> tuple[str, str]:
  """`'fashion_mnist+noise'` -> ('fashion_mnist', 'noise'); '' for a plain data set name."""
  base, _, shift = name.partition("+")
  if shift and shift not in SHIFTS + VALIDATION:
    raise ValueError(f"unknown low-level shift {shift!r} in {name!r}: choose one of "
                     f"{', '.join(SHIFTS + VALIDATION)} (e.g. {base}+noise).")
  return base, shift


def apply(images: np.ndarray, shift: str, seed: int = 0) -> np.ndarray:
  """uint8 `[N, H, W, C]` images with `shift` applied (seeded, so the set is reproducible)."""
  x = np.asarray(images, np.uint8)
  rng = np.random.default_rng([seed, 7])
  n, h, w, _ = x.shape
  if shift == "noise":
    replace = rng.random(x.shape) < 0.1
    return np.where(replace, rng.integers(0, 256, x.shape), x).astype(np.uint8)
  if shift == "dim":
    return (x // 2).astype(np.uint8)
  if shift == "invert":
    return (255 - x).astype(np.uint8)
  if shift == "constant":
    return np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 1)), x.shape).astype(np.uint8)
  if shift == "uniform":
    return rng.integers(0, 256, x.shape).astype(np.uint8)
  if shift == "blur":
    return np.round(ndimage.gaussian_filter(x.astype(np.float64), (0, 1, 1, 0))).astype(np.uint8)
  if shift == "translate":
    return ndimage.shift(x, (0, 6, 6, 0), order=0, cval=0).astype(np.uint8)
  if shift == "zoomout":
    small = x[:, ::2, ::2]
    out = np.zeros_like(x)
    top, left = (h - small.shape[1]) // 2, (w - small.shape[2]) // 2
    out[:, top:top + small.shape[1], left:left + small.shape[2]] = small
    return out
  if shift == "patchshuffle":
    ph, pw = h // 4, w // 4
    out = x.copy()
    for i in range(n):
      order = rng.permutation(16)
      for dst, src in enumerate(order):
        (dy, dx), (sy, sx) = divmod(dst, 4), divmod(src, 4)
        out[i, dy * ph:(dy + 1) * ph, dx * pw:(dx + 1) * pw] = \
            x[i, sy * ph:(sy + 1) * ph, sx * pw:(sx + 1) * pw]
    return out
  if shift == "flipud":
    return x[:, ::-1].copy()
  if shift == "texture":
    ph, pw = h // 4, w // 4
    ys, xs = rng.integers(0, h - ph + 1, n), rng.integers(0, w - pw + 1, n)
    patches = np.stack([x[i, y:y + ph, c:c + pw] for i, (y, c) in enumerate(zip(ys, xs))])
    return np.tile(patches, (1, 4, 4, 1))[:, :h, :w]
  if shift == "speckle":
    density = x.reshape(n, -1).mean(1).reshape(n, 1, 1, 1) / 255.0
    return np.where(rng.random(x.shape) < density, 255, 0).astype(np.uint8)
  raise ValueError(f"unknown low-level shift {shift!r}: choose one of "
                   f"{', '.join(SHIFTS + VALIDATION)}.")
