"""Tests of hvae_jax.distributions: Gaussian, Bernoulli and discretized logistic mixture."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from hvae_jax import distributions as d

LN2 = np.log(2.0)
LEVELS = np.arange(256, dtype=np.uint8)

# Jitted once per shape: the tests stay fast on a loaded CPU (eager mode compiles every op).
log_prob = jax.jit(d.dmol_log_prob, static_argnums=2)
sample = jax.jit(d.dmol_sample, static_argnums=2)


# ------------------------------------------------------------------------------------------
# Gaussian and Bernoulli
# ------------------------------------------------------------------------------------------


def test_softplus_std_is_one_at_zero_matches_formula_and_is_clamped():
  assert float(d.softplus_std(jnp.float32(0.0))) == 1.0
  pre = np.linspace(-20.0, 40.0, 61)
  expected = np.log1p(np.exp(LN2 * pre)) / LN2
  got = d.softplus_std(jnp.asarray(pre, jnp.float32))
  assert got.dtype == jnp.float32 and got.shape == pre.shape
  np.testing.assert_allclose(np.asarray(got), np.maximum(expected, 1e-6), rtol=1e-5)
  assert float(d.softplus_std(jnp.float32(-1e4))) == pytest.approx(1e-6)
  assert float(d.softplus_std(jnp.float32(-50.0), min_std=0.1)) == pytest.approx(0.1)
  assert np.isfinite(float(d.softplus_std(jnp.float32(1e4))))


def test_gaussian_log_prob_matches_scipy_and_broadcasts():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(4, 5)) * 3
  mean = rng.normal(size=(4, 5))
  std = np.exp(rng.normal(size=(5,)))
  got = d.gaussian_log_prob(jnp.asarray(z), jnp.asarray(mean), jnp.asarray(std))
  assert got.dtype == jnp.float32 and got.shape == (4, 5)
  np.testing.assert_allclose(np.asarray(got), stats.norm.logpdf(z, mean, std), rtol=1e-5,
                             atol=1e-5)


def test_gaussian_sample_is_reparameterised():
  mean = jnp.full((20000,), 2.0)
  std = jnp.full((20000,), 0.5)
  z = d.gaussian_sample(jax.random.key(0), mean, std)
  assert z.shape == (20000,) and z.dtype == jnp.float32
  assert abs(float(z.mean()) - 2.0) < 0.02 and abs(float(z.std()) - 0.5) < 0.02
  eps = (z - mean) / std
  g_mean, g_std = jax.grad(lambda m, s: d.gaussian_sample(jax.random.key(0), m, s).sum(),
                           argnums=(0, 1))(mean, std)
  np.testing.assert_allclose(np.asarray(g_mean), 1.0)
  np.testing.assert_allclose(np.asarray(g_std), np.asarray(eps), rtol=1e-4, atol=1e-5)


def test_bernoulli_log_prob_matches_formula_and_is_finite_for_large_logits():
  logits = np.array([-100.0, -30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0, 100.0])
  for x in (0.0, 1.0):
    xs = np.full_like(logits, x)
    got = d.bernoulli_log_prob(jnp.asarray(xs, jnp.float32), jnp.asarray(logits, jnp.float32))
    # log sigmoid(l) = -log1p(exp(-l)), evaluated in float64 without overflow.
    ref = -np.logaddexp(0.0, -logits) if x == 1.0 else -np.logaddexp(0.0, logits)
    assert got.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda l: d.bernoulli_log_prob(jnp.asarray(xs), l).sum())(
        jnp.asarray(logits, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), x - special.expit(logits), atol=1e-6)
  # Images of uint8 {0, 1} are accepted too.
  np.testing.assert_allclose(
      np.asarray(d.bernoulli_log_prob(jnp.asarray([0, 1], jnp.uint8), jnp.zeros(2))),
      [np.log(0.5)] * 2, rtol=1e-6)


def test_bernoulli_mean():
  logits = jnp.asarray([-3.0, -1e-3, 0.0, 2.0])
  np.testing.assert_allclose(np.asarray(d.bernoulli_mean(logits)),
                             special.expit(np.asarray(logits)), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# DMoL: an independent float64 reference written from the documented layout
# ------------------------------------------------------------------------------------------


def reference_dmol_log_prob(x_uint8, params, num_mix):
  """Slow numpy float64 log p(x) per pixel: exact bin masses, no fallbacks.

  x `[N, C]` uint8 levels, params `[N, P]` laid out as in the module docstring.
  """
  x_uint8, params = np.asarray(x_uint8), np.asarray(params, np.float64)
  n, channels = x_uint8.shape
  m_ = num_mix
  block = lambda p, b: p[m_ * b:m_ * (b + 1)]
  pairs = [(c, j) for c in range(1, channels) for j in range(c)]
  out = np.empty(n)
  for i in range(n):
    p = params[i]
    v = x_uint8[i].astype(np.float64) / 127.5 - 1.0
    logits = block(p, 0)
    log_w = logits - special.logsumexp(logits)
    comp = np.zeros(m_)
    for k in range(m_):
      for c in range(channels):
        loc = block(p, 1 + c)[k]
        for row, (cc, j) in enumerate(pairs):
          if cc == c:
            loc += np.tanh(block(p, 1 + 2 * channels + row)[k]) * v[j]
        s = np.exp(max(block(p, 1 + channels + c)[k], -7.0))
        level = int(x_uint8[i, c])
        hi = np.inf if level == 255 else (v[c] + 1 / 255 - loc) / s
        lo = -np.inf if level == 0 else (v[c] - 1 / 255 - loc) / s
        # P(lo < t <= hi) for a standard logistic, on the side with the smaller tail.
        if lo > 0:
          mass = special.expit(-lo) - special.expit(-hi)
        else:
          mass = special.expit(hi) - special.expit(lo)
        comp[k] += np.log(mass)
    out[i] = special.logsumexp(comp + log_w)
  return out


def _params(seed, channels, num_mix, shape=(), mean_scale=1.0, log_scale_range=(-2.0, 1.0),
            logit_scale=2.0, coeff_scale=1.5):
  """Random float32 parameters with means, log-scales and coefficients in chosen ranges."""
  rng = np.random.default_rng(seed)
  m, c = num_mix, channels
  logits = logit_scale * rng.normal(size=(*shape, m))
  means = mean_scale * rng.uniform(-1.0, 1.0, size=(*shape, c * m))
  log_scales = rng.uniform(*log_scale_range, size=(*shape, c * m))
  coeffs = coeff_scale * rng.normal(size=(*shape, c * (c - 1) // 2 * m))
  p = np.concatenate([logits, means, log_scales, coeffs], axis=-1).astype(np.float32)
  assert p.shape[-1] == d.dmol_num_params(channels, num_mix)
  return p


def _levels(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


def test_dmol_num_params_layout_and_channel_inference():
  assert d.dmol_num_params(1, 5) == 15
  assert d.dmol_num_params(3, 10) == 100
  assert d.dmol_num_params(2, 4) == 4 * 6
  for c, m in itertools.product((1, 2, 3, 4), (1, 3, 10)):
    assert d.dmol_channels(d.dmol_num_params(c, m), m) == c
  with pytest.raises(ValueError):
    d.dmol_channels(31, 10)
  with pytest.raises(ValueError):
    d.dmol_log_prob(jnp.zeros((2, 2, 3), jnp.uint8), jnp.zeros((2, 2, 31)), 10)


@pytest.mark.parametrize("channels,num_mix", [(1, 1), (1, 4), (2, 3), (3, 1), (3, 5)])
def test_dmol_log_prob_matches_float64_reference(channels, num_mix):
  n = 64
  key = 10 * channels + num_mix
  p = _params(key, channels, num_mix, (n,), mean_scale=1.2)
  x = _levels(key + 100, (n, channels))
  # Make sure the edge levels are covered.
  x[:4], x[4:8], x[8, 0], x[9, -1] = 0, 255, 0, 255
  got = log_prob(x, p, num_mix)
  assert got.shape == (n,) and got.dtype == jnp.float32
  ref = reference_dmol_log_prob(x, p, num_mix)
  # log-scales >= -2 keep the bin width far below the scale, so the pdf * width fallback is
  # accurate where it is used.
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=2e-4)


def test_dmol_log_prob_image_shapes_and_broadcasting():
  p = _params(0, 3, 4, (2, 5, 6))
  x = _levels(1, (2, 5, 6, 3))
  lp = log_prob(x, p, 4)
  assert lp.shape == (2, 5, 6)
  ref = reference_dmol_log_prob(x.reshape(-1, 3), p.reshape(-1, p.shape[-1]), 4)
  np.testing.assert_allclose(np.asarray(lp).ravel(), ref, rtol=1e-4, atol=2e-4)
  # One parameter set shared by a batch broadcasts over the batch axis.
  lp_b = log_prob(x, p[:1], 4)
  assert lp_b.shape == (2, 5, 6)
  np.testing.assert_allclose(np.asarray(lp_b[0]), np.asarray(lp[0]), rtol=1e-6)


def _sum_over_levels_c1(p, num_mix):
  lp = log_prob(LEVELS[:, None], np.asarray(p, np.float32), num_mix)
  return float(np.exp(np.asarray(lp, np.float64)).sum())


@pytest.mark.parametrize("mean", [-10.0, -1.0, -0.9961, -0.3, 0.0, 0.00392, 0.7, 1.0, 10.0])
@pytest.mark.parametrize("log_scale", [-9.0, -7.0, -5.5, -4.0, -2.0, 0.0, 2.0, 5.0])
def test_dmol_single_component_greyscale_sums_to_one(mean, log_scale):
  p = np.asarray([0.3, mean, log_scale], np.float32)
  assert abs(_sum_over_levels_c1(p, 1) - 1.0) < 1e-4


def test_dmol_greyscale_mixtures_sum_to_one():
  for i in range(12):
    p = _params(i, 1, 5, mean_scale=3.0, log_scale_range=(-8.0, 5.0),
                logit_scale=3.0)
    assert abs(_sum_over_levels_c1(p, 5) - 1.0) < 1e-4, i


def test_dmol_rgb_factorises_without_coupling_and_each_channel_is_normalised():
  """With zero coupling and one component the RGB mass is the product of three 1-D masses."""
  means = [-0.2, 0.55, 0.98]
  log_scales = [-4.5, -2.0, 1.0]
  p_rgb = np.asarray([1.7] + means + log_scales + [0.0] * 3, np.float32)
  singles = [np.asarray([0.0, means[c], log_scales[c]], np.float32) for c in range(3)]
  for single in singles:
    assert abs(_sum_over_levels_c1(single, 1) - 1.0) < 1e-4
  x = _levels(0, (500, 3))
  x[0], x[1] = 0, 255
  lp = log_prob(x, p_rgb, 1)
  per_channel = sum(np.asarray(log_prob(x[:, c:c + 1], singles[c], 1)) for c in range(3))
  np.testing.assert_allclose(np.asarray(lp), np.asarray(per_channel), rtol=1e-5, atol=1e-5)


def test_dmol_rgb_with_coupling_sums_to_one_over_all_colours():
  """The full 256^3 sum, one value of the first channel at a time."""
  p = _params(5, 3, 2, mean_scale=1.0, log_scale_range=(-4.0, -1.0),
              coeff_scale=1.0)
  g1, g2 = jnp.meshgrid(LEVELS, LEVELS, indexing="ij")

  @jax.jit
  def slab(c0):
    x = jnp.stack([jnp.full(g1.shape, c0, jnp.uint8), g1, g2], -1)
    return jnp.exp(d.dmol_log_prob(x, p, 2)).sum()

  total = float(jax.lax.map(slab, LEVELS).sum())
  assert abs(total - 1.0) < 1e-3, total


def test_dmol_finite_values_and_gradients_at_extremes():
  """Means +-10, log-scales below the clamp, at it and large, saturated coupling and mixture
  logits, with x at the edge levels and next to them: finite log-probs <= 0, finite grads."""
  num_mix = 2
  grad_fn = jax.jit(jax.grad(lambda p, x: d.dmol_log_prob(x, p, num_mix).sum()))
  for channels in (1, 3):
    x = np.asarray(list(itertools.product((0, 1, 127, 254, 255), repeat=channels)), np.uint8)
    cases = list(itertools.product((-10.0, 0.0, 10.0), (-20.0, -7.0, 5.0), (0.0, 30.0),
                                   (0.0, 50.0)))
    p = np.stack([np.concatenate([
        [0.0, logit],
        np.full(channels * num_mix, mean),
        np.full(channels * num_mix, log_scale),
        np.full(channels * (channels - 1) // 2 * num_mix, coeff)])
                  for mean, log_scale, coeff, logit in cases]).astype(np.float32)
    p = np.ascontiguousarray(np.broadcast_to(p[:, None], (len(cases), *x.shape[:1], p.shape[-1])))
    per = np.asarray(log_prob(x, p, num_mix))  # [cases, pixels]
    grad = np.asarray(grad_fn(p, x))  # cases are independent, so this is per case
    for i, case in enumerate(cases):
      assert np.all(np.isfinite(per[i])), (channels, case)
      assert np.all(per[i] <= 1e-6), (channels, case)  # log-probabilities of a discrete variable
      assert np.all(np.isfinite(grad[i])), (channels, case)


def test_dmol_gradients_match_finite_differences_of_the_reference():
  num_mix, channels = 2, 3
  p = _params(7, channels, num_mix, (6,), log_scale_range=(-2.5, 0.0))
  x = _levels(8, (6, channels))
  x[0, 0], x[1, 2] = 0, 255
  grad = jax.jit(jax.grad(lambda q: d.dmol_log_prob(x, q, num_mix).sum()))(p)
  grad = np.asarray(grad, np.float64)
  p64 = np.asarray(p, np.float64)
  eps = 1e-5
  num = np.zeros_like(p64)
  for idx in np.ndindex(p64.shape):
    up, down = p64.copy(), p64.copy()
    up[idx] += eps
    down[idx] -= eps
    num[idx] = (reference_dmol_log_prob(x, up, num_mix).sum()
                - reference_dmol_log_prob(x, down, num_mix).sum()) / (2 * eps)
  np.testing.assert_allclose(grad, num, rtol=2e-3, atol=2e-3)


def test_dmol_sample_greyscale_histogram_matches_probabilities():
  num_mix, n = 2, 100_000
  p = np.asarray([0.5, -0.5, -0.3, 0.8, -3.0, -2.5], np.float32)  # logits, means, log-scales
  x = sample(jax.random.key(0), np.broadcast_to(p, (n, p.shape[-1])), num_mix)
  assert x.dtype == jnp.uint8 and x.shape == (n, 1)
  probs = np.exp(np.asarray(log_prob(LEVELS[:, None], p, num_mix), np.float64))
  hist = np.bincount(np.asarray(x[:, 0]), minlength=256) / n
  assert 0.5 * np.abs(hist - probs).sum() < 0.03
  assert abs(float((hist * np.arange(256)).sum() - (probs * np.arange(256)).sum())) < 1.0
  # The component weights: mass below / above the middle follows the logits.
  w = special.softmax([0.5, -0.5])
  assert abs(hist[:128].sum() - w[0]) < 0.01


def test_dmol_sample_single_component_edges():
  """A mean beyond the range puts (almost) every sample on the edge level."""
  n = 5000
  for mean, level in ((-10.0, 0), (10.0, 255)):
    p = np.broadcast_to(np.asarray([0.0, mean, -1.0], np.float32), (n, 3))
    x = sample(jax.random.key(1), p, 1)
    assert np.mean(np.asarray(x[:, 0]) == level) > 0.99


def test_dmol_sample_rgb_joint_matches_probabilities_with_coupling():
  """Narrow scales put the joint on a few dozen colours; compare them all with exp(log p).

  At these scales the coupling to the *discretized* earlier channels matters: a sampler that
  coupled to the continuous values (as PixelCNN++ does) is off by a total variation of ~0.1.
  """
  num_mix, n = 2, 60_000
  logits = [0.3, -0.3]
  means = [-0.3, 0.5, 0.1, 0.2, -0.6, 0.4]  # [channel][component]
  log_scales = [-6.0, -5.6, -6.2, -5.8, -6.0, -5.7]
  coeffs = [1.0, -0.8, 0.5, 0.9, -1.2, 0.3]  # (G|R), (B|R), (B|G), raw
  p = np.asarray(logits + means + log_scales + coeffs, np.float32)
  x = np.asarray(sample(jax.random.key(2), np.broadcast_to(p, (n, 10 * num_mix)), num_mix))
  assert x.dtype == np.uint8 and x.shape == (n, 3)
  colours, counts = np.unique(x, axis=0, return_counts=True)
  probs = np.exp(np.asarray(log_prob(colours, p, num_mix), np.float64))
  assert probs.sum() > 0.99  # the samples cover the colours that carry the mass
  assert 0.5 * np.abs(counts / n - probs).sum() < 0.04  # sampling noise alone: ~0.02
  common = probs > 1e-3
  z_scores = np.abs(counts / n - probs)[common] / np.sqrt(probs[common] / n)
  assert common.sum() > 20 and z_scores.max() < 5.0


def test_dmol_sample_image_shape_and_range():
  p = _params(2, 3, 5, (2, 4, 4), mean_scale=3.0, log_scale_range=(-7.0, 3.0))
  x = sample(jax.random.key(1), p, 5)
  assert x.shape == (2, 4, 4, 3) and x.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(x), np.asarray(sample(jax.random.key(1), p, 5)))
  assert not np.array_equal(np.asarray(x), np.asarray(sample(jax.random.key(2), p, 5)))


def test_sum_per_example_is_pairwise_accurate():
  """784 float32 terms of ~2: XLA's one-by-one reduction is off by ~1e-3 (the reference's
  cascade sum is not); the pairwise sum stays within a few 1e-4 of the float64 sum."""
  x = np.random.default_rng(0).uniform(1, 3, (64, 28, 28, 1)).astype(np.float32)
  got = np.asarray(jax.jit(d.sum_per_example)(x))
  assert got.shape == (64,)
  assert np.abs(got - x.astype(np.float64).sum((1, 2, 3))).max() < 5e-4
  odd = np.random.default_rng(1).normal(size=(3, 5, 7)).astype(np.float32)  # padding path
  np.testing.assert_allclose(np.asarray(d.sum_per_example(odd)), odd.sum((1, 2)), atol=1e-5)
