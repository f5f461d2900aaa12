"""Tests of hvae_jax.preprocess: training and evaluation binarization, model input by kind."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvae_jax import preprocess


def test_binarize_statistics():
  x = np.tile(np.arange(256, dtype=np.uint8), (4000, 1))  # every pixel value, 4000 draws each
  b = jax.jit(preprocess.binarize)(jax.random.key(0), x)
  assert b.dtype == jnp.float32 and b.shape == x.shape
  b = np.asarray(b)
  assert set(np.unique(b)) == {0.0, 1.0}
  np.testing.assert_allclose(b.mean(0), np.arange(256) / 255, atol=0.04)
  assert b[:, 0].max() == 0 and b[:, 255].min() == 1
  b2 = np.asarray(preprocess.binarize(jax.random.key(1), x))
  assert (b != b2).any()
  np.testing.assert_array_equal(b, np.asarray(preprocess.binarize(jax.random.key(0), x)))


def test_binarize_rejects_floats():
  with pytest.raises(TypeError):
    preprocess.binarize(jax.random.key(0), np.zeros((2, 2), np.float32))


def test_eval_binarize():
  # 2000 distinct images (the last pixel numbers them), each a ramp 0..255.
  x = np.tile(np.arange(257, dtype=np.uint16), (2000, 1))
  x[:, -1] = np.arange(2000) % 256
  x[:, -2] = np.arange(2000) // 256
  x = x.astype(np.uint8)
  a = preprocess.eval_binarize(x, seed=0)
  assert a.dtype == np.float32 and a.shape == x.shape and set(np.unique(a)) == {0.0, 1.0}
  np.testing.assert_array_equal(a, preprocess.eval_binarize(x, seed=0))
  assert (a != preprocess.eval_binarize(x, seed=1)).any()
  np.testing.assert_allclose(a.mean(0)[:-2], np.arange(255) / 255, atol=0.05)


def test_eval_binarize_is_per_image():
  """An image's binarization depends on the image and the seed only: not on its position or
  the other images in the call (so its scores and verdict do not either)."""
  x = np.random.default_rng(0).integers(0, 256, (50, 6, 6, 1), dtype=np.uint8)
  a = preprocess.eval_binarize(x, seed=3)
  perm = np.random.default_rng(1).permutation(50)
  np.testing.assert_array_equal(preprocess.eval_binarize(x[perm], seed=3), a[perm])
  np.testing.assert_array_equal(preprocess.eval_binarize(x[7:8], seed=3), a[7:8])
  twice = preprocess.eval_binarize(np.concatenate([x[:1], x[:1]]), seed=3)
  np.testing.assert_array_equal(twice[0], twice[1])


def test_train_input():
  x = np.full((2, 4, 4, 3), 7, np.uint8)
  out = preprocess.train_input(x, "discrete")
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, x)
  with pytest.raises(ValueError, match="key"):
    preprocess.train_input(x, "binary")
  with pytest.raises(ValueError, match="kind"):
    preprocess.train_input(x, "continuous", key=jax.random.key(0))


def test_eval_input():
  x = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
  np.testing.assert_array_equal(preprocess.eval_input(x, "binary", 2),
                                preprocess.eval_binarize(x, 2))
  assert preprocess.eval_input(x, "discrete", 2) is x
  with pytest.raises(ValueError, match="kind"):
    preprocess.eval_input(x, "continuous", 2)
