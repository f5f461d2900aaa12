"""Per-image randomness: every random draw made for an image derives from its bytes and a seed.

An image's scores and verdict must depend only on the image, the model and the seed, never
on the other images in the call or its position among them. So the evaluation binarization
of a greyscale image and the posterior/prior samples drawn to score it both come from a
digest of the image's pixels (with its shape), never from a batch index or a whole-array
draw. Two calls that contain the same image give it the same scores.
"""
from __future__ import annotations

import hashlib

import jax
import numpy as np

Array = jax.Array


def digests(images: np.ndarray) -> list[bytes]:
  """sha256 of each image's shape and bytes, `[N, ...]` -> N digests."""
  x = np.ascontiguousarray(images)
  shape = str(x.shape[1:]).encode()
  return [hashlib.sha256(shape + x[i].tobytes()).digest() for i in range(len(x))]


def words(digest: bytes, n: int) -> np.ndarray:
  """The first `n` little-endian uint32 words of a digest: seeds for numpy or threefry."""
  return np.frombuffer(digest, dtype="<u4", count=n)


def key_data(images: np.ndarray, seed: int) -> np.ndarray:
  """`[N, 2]` uint32 threefry key data of each image for `seed` (`sampling_keys` makes keys)."""
  tag = f"hvae_jax.sample:{int(seed)}".encode()
  return np.stack([words(hashlib.sha256(tag + d).digest(), 2) for d in digests(images)]
                  ) if len(images) else np.zeros((0, 2), np.uint32)


def sampling_keys(data: Array) -> Array:
  """Typed threefry keys `[N]` from `key_data` (traceable, so a jitted scorer can take them)."""
  return jax.random.wrap_key_data(data, impl="threefry2x32")
