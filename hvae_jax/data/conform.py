"""Images of a data set brought to the model's shape, by one rule for every source.

A folder's files, an npz archive's arrays, a tfds data set's images and arrays handed to the
API all go through `image_files.to_model`: greyscale (ITU-R 601 luma) or RGB as the model
takes, transparent pixels black, then resized with a Lanczos filter keeping the aspect ratio
and padding with black (`RESIZE`, how FashionMNIST and MNIST were made, and the default of
`python -m hvae_jax.score`, so both give an image the same scores). What was done is reported
once per kind of change, with the number of images it changed.

Decoded data sets are held in memory as uint8 `[N, H, W, C]`; `check_fits` refuses one that
would take more than `MEMORY_FRACTION` of this machine's memory before any is decoded.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from hvae_jax.data import image_files

RESIZE = "pad"  # the key of image_files.RESIZE every data set is resized with
MEMORY_FRACTION = 0.5
# Pillow's modes of uint8 arrays by their channel count.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def check_fits(n: int, image_shape: Sequence[int], where: str) -> None:
  """Refuses (ValueError, one line) `n` images of `image_shape` that would take more than
  `MEMORY_FRACTION` of the machine's physical memory."""
  need = n * math.prod(image_shape)
  try:
    limit = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * MEMORY_FRACTION)
  except (ValueError, OSError, AttributeError):  # no sysconf (Windows): no limit known
    return
  if need > limit:
    raise ValueError(f"{where}: {n:,} images of {'x'.join(map(str, image_shape))} take "
                     f"{need / 1e9:.1f} GB decoded, more than the limit of {limit / 1e9:.1f} GB "
                     f"({MEMORY_FRACTION:.0%} of this machine's memory); use a part of it (a "
                     f"subfolder, or a tfds split such as 'train[:10%]').")


def _as_images(x: np.ndarray, where: str, one: bool) -> np.ndarray:
  """uint8 `[..., H, W, C]` (C = 1, 3 or 4) from `[..., H, W]` or that; ValueError otherwise."""
  x = np.asarray(x)
  if x.dtype != np.uint8:
    hint = (" (floats in [0, 1]? pass (x * 255).round().astype(np.uint8))"
            if np.issubdtype(x.dtype, np.floating) else "")
    raise ValueError(f"{where}: dtype {x.dtype}, expected uint8 pixels in [0, 255]{hint}.")
  if x.ndim == 3 - one:
    x = x[..., None]
  if x.ndim != 4 - one or x.shape[-1] not in _MODES:
    raise ValueError(f"{where}: {'an image of ' * one}shape {x.shape}, expected "
                     f"{'' if one else 'images [N, '}H, W] or [{'' if one else 'N, '}H, W, C] "
                     f"with C = 1 (greyscale), 3 (RGB) or 4 (RGBA).")
  return x


def conform(images: Sequence[np.ndarray], image_shape: Optional[Sequence[int]], where: str,
            report: Callable[[str], None] = print) -> np.ndarray:
  """uint8 `[N, *image_shape]` from an array `[N, H, W(, C)]` or any sequence of `[H, W(, C)]`
  arrays (C = 1, 3 or 4; read one at a time, so a lazy sequence is never held whole).

  Images already of `image_shape` are taken as they are; the others go through
  `image_files.to_model`, and `report` gets one line per kind of change. `image_shape` None
  keeps every image's own shape, which must then be the same for all.

  Raises:
    ValueError: naming `where`: not uint8, not images, or of several shapes with no
      `image_shape`.
  """
  if isinstance(images, np.ndarray):
    x = _as_images(images, where, one=False)
    if image_shape is None or x.shape[1:] == tuple(image_shape):
      return x
  n, given = len(images), image_shape is not None
  if not given:
    image_shape = _as_images(images[0], where, one=True).shape if n else (0, 0, 1)
  image_shape = tuple(image_shape)
  check_fits(n, image_shape, where)
  out = np.empty((n, *image_shape), np.uint8)
  done = []
  for i in range(n):
    a = _as_images(images[i], where, one=True)
    if a.shape == image_shape:
      out[i] = a
      continue
    if not given:
      raise ValueError(f"{where}: images of several shapes ({a.shape}, {image_shape}); give "
                       f"the shape [H, W, C] to bring them to.")
    img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a, _MODES[a.shape[-1]])
    converted = image_files.to_model(img, image_shape, RESIZE)
    out[i] = converted.pixels
    done.append(converted.conversions)
  for line in image_files.conversion_notes(done, RESIZE):
    report(f"Note: {where} ({n} images): {line}.")
  return out
