"""What the model is fed: uint8 images `[N, H, W, C]` made model input by their data set's kind.

* greyscale sets (`kind='binary'`) are binarized, x ~ Bernoulli(pixel/255), for the Bernoulli
  likelihood: afresh each training step (`train_input`), once with a fixed, seeded draw per
  image for evaluation, so that scores are reproducible (`eval_input`);
* colour sets (`kind='discrete'`) stay uint8 in [0, 255] for the discretized likelihood.

Also Ren et al. (2019)'s input perturbation for background models (`perturb`).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hvae_jax import image_keys

Array = jax.Array

KINDS = ("binary", "discrete")


def binarize(key: Array, images_uint8: Any) -> Array:
  """Dynamic binarization: float32 x ~ Bernoulli(pixel / 255), same shape, values in {0, 1}.

  Pure jax and jittable; a fresh key per step gives a fresh draw (the standard regulariser for
  binary likelihoods on greyscale data). Pixel 0 always maps to 0 and 255 always to 1.
  """
  x = jnp.asarray(images_uint8)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    # Floats in [0, 1] would be silently divided by 255 again: refuse them.
    raise TypeError(f"binarize expects integer pixels in [0, 255], got dtype {x.dtype}.")
  p = x.astype(jnp.float32) / 255.0
  return (jax.random.uniform(key, x.shape, jnp.float32) < p).astype(jnp.float32)


def eval_binarize(images_uint8: np.ndarray, seed: int = 0) -> np.ndarray:
  """One fixed Bernoulli(pixel/255) draw per image: float32 {0, 1}, same shape.

  Each image's uniform noise comes from a numpy generator seeded with (`seed`, a digest of
  its pixels), so the same image always becomes the same binary image, alone or inside any
  set, in any position (`image_keys`): evaluation scores are reproducible per image.
  """
  images = np.asarray(images_uint8)
  if not np.issubdtype(images.dtype, np.integer):
    raise TypeError(f"eval_binarize expects integer pixels in [0, 255], got {images.dtype}.")
  p = images.astype(np.float32) / np.float32(255.0)
  out = np.empty(images.shape, np.float32)
  for i, d in enumerate(image_keys.digests(images)):
    rng = np.random.default_rng([int(seed), *image_keys.words(d, 4).tolist()])
    out[i] = rng.random(images.shape[1:], dtype=np.float32) < p[i]
  return out


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Unknown kind {kind!r}; choose one of {KINDS}.")


def train_input(images_uint8: Any, kind: str, key: Optional[Array] = None) -> Any:
  """Training input from uint8 `[B, H, W, C]` images, jittable.

  'binary': `binarize(key, images)` (float32 {0, 1}), a fresh draw per key; `key` is required.
  'discrete': the uint8 images unchanged (the discretized likelihood takes [0, 255]).
  """
  _check_kind(kind)
  if kind != "binary":
    return images_uint8
  if key is None:
    raise ValueError("train_input(kind='binary') needs a PRNG key for the Bernoulli draw "
                     "(or use eval_input for fixed evaluation data).")
  return binarize(key, images_uint8)


def eval_input(images_uint8: np.ndarray, kind: str, seed: int) -> np.ndarray:
  """Evaluation input from uint8 `[N, H, W, C]` images: `eval_binarize(images, seed)` for
  'binary' (float32 {0, 1}, the same per image wherever it appears), uint8 as is for
  'discrete'."""
  _check_kind(kind)
  return eval_binarize(images_uint8, seed) if kind == "binary" else images_uint8


def perturb(key: Array, images_uint8: Any, rate: float) -> Array:
  """Ren et al. (2019)'s input perturbation, fresh per call: each pixel value (each channel)
  is replaced with probability `rate` (their mu) by a uniform draw from {0, ..., 255}; uint8
  `[B, H, W, C]` in and out, jittable. Applied before binarization, a replaced greyscale
  pixel becomes a fair random bit (Bernoulli(U/255) with U uniform is Bernoulli(1/2))."""
  x = jnp.asarray(images_uint8)
  if x.dtype != jnp.uint8:
    raise TypeError(f"perturb expects uint8 pixels, got dtype {x.dtype}.")
  k_mask, k_val = jax.random.split(key)
  noise = jax.random.randint(k_val, x.shape, 0, 256, jnp.int32).astype(jnp.uint8)
  return jnp.where(jax.random.uniform(k_mask, x.shape) < rate, noise, x)
