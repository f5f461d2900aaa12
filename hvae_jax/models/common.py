"""Pieces every hierarchical model here shares: the model output, Gaussian latents, likelihoods.

The one contract the rest of the library relies on (objectives, OOD scores, training) is
`ModelOutput`: log p(x|z) per example and, per latent variable, the elementwise single-sample
KL estimate log q(z|.) - log p(z|.). Models also expose `latent_layers`, the hierarchy level
(1 = lowest) of each latent variable, which is what `n_skip` (the paper's k) counts.
"""
from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hvae_jax import distributions as dist
from hvae_jax import stat_names
from hvae_jax.layers import WNConv, WNDense, get_activation

Array = jax.Array


@flax.struct.dataclass
class ModelOutput:
  """Per-example terms of the bound.

  log_px: `[batch]` log p(x | z) in nats.
  kl: one array per latent variable, elementwise `[batch, *latent_shape]`, ordered from the
    lowest latent up; zero for latents drawn from the prior (the k lowest in L^{>k}).
  """
  log_px: Array
  kl: tuple[Array, ...]


@flax.struct.dataclass
class Gaussian:
  """Diagonal Gaussian with a sample drawn from it, `[batch, *latent_shape]` each."""
  mean: Array
  std: Array
  z: Array

  def log_prob(self, z: Array) -> Array:
    return dist.gaussian_log_prob(z, self.mean, self.std)


def standard_normal(shape: tuple[int, ...]) -> tuple[Array, Array]:
  """Mean and std of the fixed N(0, I) top prior."""
  return jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32)


class GaussianLatent(nn.Module):
  """`activation` then a weight-normed conv ('conv') or dense ('dense') layer: mean and std.

  Input features `[batch, h, w, c]`; output a Gaussian over `[batch, h, w, features]` (conv)
  or `[batch, features]` (dense). std = softplus_{beta=ln 2}(pre), >= 1e-6. Without a `key`
  the sample z is the mean.
  """
  kind: str
  features: int
  kernel_size: int = 3
  dtype: jnp.dtype = jnp.float32
  activation: str = "elu"

  @nn.compact
  def __call__(self, h: Array, key: Optional[Array]) -> Gaussian:
    h = get_activation(self.activation)(h)
    if self.kind == "conv":
      out = WNConv(2 * self.features, self.kernel_size, dtype=self.dtype)(h)
    elif self.kind == "dense":
      out = WNDense(2 * self.features, dtype=self.dtype)(h)
    else:
      raise ValueError(f"Unknown latent kind {self.kind!r}; use 'conv' or 'dense'.")
    mean, pre = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    std = dist.softplus_std(pre)
    z = mean if key is None else dist.gaussian_sample(key, mean, std)
    return Gaussian(mean, std, z)


class AsFeatureMap(nn.Module):
  """Projects a dense latent `[batch, d]` to a feature map `[batch, *shape]`; conv latents pass."""
  shape: tuple[int, int, int]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    if z.ndim == 4:
      return z.astype(self.dtype)
    h, w, c = self.shape
    return WNDense(h * w * c, dtype=self.dtype)(z).reshape(z.shape[0], h, w, c)


class Likelihood(nn.Module):
  """p(x | d): `activation` then a weight-normed conv to the likelihood's parameters.

  'bernoulli': logits `[batch, H, W, C]` (3x3 conv), x binarized floats.
  'dmol': discretized mixture of `num_mix` logistics (1x1 conv), x uint8 in [0, 255].
  """
  kind: str
  channels: int
  num_mix: int = 10
  dtype: jnp.dtype = jnp.float32
  activation: str = "leaky_relu"

  def setup(self):
    if self.kind == "bernoulli":
      self.head = WNConv(self.channels, 3, dtype=self.dtype)
    elif self.kind == "dmol":
      self.head = WNConv(dist.dmol_num_params(self.channels, self.num_mix), 1, dtype=self.dtype)
    else:
      raise ValueError(f"Unknown likelihood {self.kind!r}; use 'bernoulli' or 'dmol'.")

  def params_from(self, d: Array) -> Array:
    return self.head(get_activation(self.activation)(d)).astype(jnp.float32)

  def log_prob(self, d: Array, x: Array) -> Array:
    """log p(x | d) summed over pixels: `[batch]`."""
    p = self.params_from(d)
    if self.kind == "bernoulli":
      return dist.sum_per_example(dist.bernoulli_log_prob(x.astype(jnp.float32), p))
    return dist.sum_per_example(dist.dmol_log_prob(x, p, self.num_mix))

  def sample_image(self, d: Array, key: Array) -> Array:
    """An image from p(x | d): Bernoulli means in [0, 1] (greyscale) or uint8 samples."""
    p = self.params_from(d)
    if self.kind == "bernoulli":
      return dist.bernoulli_mean(p)
    return dist.dmol_sample(key, p, self.num_mix)


# uint8 colour k -> k / divisor + shift, as the encoder sees it (HierarchicalModel.colour_input).
COLOUR_INPUTS = {"unit": (255.0, 0.0), "signed": (127.5, -1.0)}


def use_prior_mask(latent_layers: tuple[int, ...], n_skip) -> Array:
  """`[n_latents]` bool: True where the latent's layer is among the `n_skip` lowest.

  `n_skip` may be a traced int so that one compiled function serves every k (vmap over k).
  """
  return jnp.asarray(latent_layers) <= jnp.asarray(n_skip)


def split_key(key: Optional[Array], n: int) -> list[Optional[Array]]:
  """`n` keys from `key`, or `n` Nones without one (every latent then takes its mean)."""
  return [None] * n if key is None else list(jax.random.split(key, n))


def latent_step(q: Optional[Gaussian], p_mean: Array, p_std: Array, from_prior,
                key: Optional[Array], sample_prior: bool) -> tuple[Array, Array]:
  """One latent of the top-down pass: its z and KL term, each `[batch, *latent_shape]`.

  The conditional prior p(z | .) has `p_mean`, `p_std`; its z is a sample (`sample_prior`,
  drawn with `key`) or its mean. Without a posterior `q` (sampling from the model) z comes
  from the prior and the KL is zero. Otherwise z is the posterior's sample and the KL the
  single-sample estimate log q(z) - log p(z), except where `from_prior` (a traced bool: the
  latent's layer is among the `n_skip` lowest) puts the prior's z in and zeros the KL.
  """
  z_p = dist.gaussian_sample(key, p_mean, p_std) if sample_prior else p_mean
  if q is None:
    return z_p, jnp.zeros_like(z_p)
  kl = q.log_prob(q.z) - dist.gaussian_log_prob(q.z, p_mean, p_std)
  return jnp.where(from_prior, z_p, q.z), jnp.where(from_prior, 0.0, kl)


SKIP_MODES = ("mean", "sample")


class HierarchicalModel(nn.Module):
  """What every model here derives from `infer`, `_top_down` and its likelihood `lik`.

  Subclasses define `infer(x, key, n_skip) -> posteriors` (bottom-up), `_top_down(posteriors,
  n_skip, key, batch) -> (d, kl terms)` (posteriors=None samples from the prior) and
  `latent_layers`; they build their latent layers and likelihood with `make_latent` and
  `make_likelihood`, set `feature_shapes` (each stage's `(h, w, c)`) in `setup`, and take
  each latent of the top-down pass with `latent_step`, as `prior_choice` says. The fields
  below are every model's; `blocks` holds ((features, kernel, stride), ...) per stage and
  `latents` (kind, features) per stage.

  The z_{<=k} that L^{>k} (n_skip = k) skips, in its two passes:
    skip_mode: top-down, from the conditional prior: its 'mean' (as the reference) or a
      'sample'.
    skip_inference: bottom-up, where z_{<=k} feeds the posteriors of the layers above: a
      posterior 'sample' (default), the same draw the ELBO uses, so that one bottom-up pass
      serves the ELBO and every k and z_{>k} ~ q(z_{>k} | x) exactly as for the ELBO (paper
      eq. 5); or the posterior 'mean', as the reference's scripts/ood-llr.py (use_mode for
      the skipped layers), for scores comparable one to one with it. 'mean' costs one
      bottom-up pass per k. 'sample' stays the default because every model, threshold and
      figure here was made with it; on the shipped small model 'mean' gives a clearly
      higher AUROC for L^{>1} and a slightly higher one for LLR^{>k}
      (bench/results/skip_inference_cpu_2026-12-03.md).
  A key of None puts every latent at its mean (posterior means in inference, prior means
  where a latent comes from the prior): a deterministic pass, the reference's use_mode=True.
  colour_input: how uint8 colour images are scaled for the encoder (`network_input`).
  """
  image_shape: tuple[int, int, int]
  blocks: tuple[tuple[tuple[int, int, int], ...], ...]
  latents: tuple[tuple[str, int], ...]
  likelihood: str = "bernoulli"
  num_mix: int = 10
  activation: str = "relu"
  latent_activation: str = "relu"
  likelihood_activation: str = "relu"
  latent_kernel: int = 3
  upsample: str = "transpose"
  skip_mode: str = "mean"
  skip_inference: str = "sample"
  colour_input: str = "unit"
  dtype: Any = jnp.float32

  @property
  def latent_names(self) -> tuple[str, ...]:
    """A name per latent, lowest first, for its statistics (`stat_names`): l1, l2, ..."""
    return stat_names.latent_names(self.latent_layers)

  def check_modes(self):
    for name in ("skip_mode", "skip_inference"):
      if getattr(self, name) not in SKIP_MODES:
        raise ValueError(f"{name} must be one of {SKIP_MODES}, got {getattr(self, name)!r}.")

  def make_latent(self, spec: tuple[str, int]) -> GaussianLatent:
    """A Gaussian latent layer for `spec` = (kind, features)."""
    return GaussianLatent(spec[0], spec[1], self.latent_kernel, self.dtype,
                          self.latent_activation)

  def network_input(self, x: Array) -> Array:
    """What the encoder sees: binarized floats as they are, uint8 colour `[batch, H, W, C]`
    scaled to [0, 1] (colour_input 'unit', as hvae-oodd) or [-1, 1] ('signed')."""
    if self.likelihood != "dmol":
      return x.astype(self.dtype)
    if self.colour_input not in COLOUR_INPUTS:
      raise ValueError(f"colour_input must be one of {sorted(COLOUR_INPUTS)}, got "
                       f"{self.colour_input!r}.")
    divisor, shift = COLOUR_INPUTS[self.colour_input]
    return (x.astype(jnp.float32) / divisor + shift).astype(self.dtype)

  def make_likelihood(self) -> Likelihood:
    return Likelihood(self.likelihood, self.image_shape[-1], self.num_mix, self.dtype,
                      self.likelihood_activation)

  def at_mean_in_inference(self, layers: tuple[int, ...], n_skip) -> Array:
    """`[len(layers)]` bool: where the bottom-up pass replaces the posterior sample of a latent
    of layer `layers[i]` with the posterior mean (skip_inference='mean', layer <= n_skip)."""
    return use_prior_mask(layers, n_skip if self.skip_inference == "mean" else 0)

  def prior_choice(self, n_layers: int, sampling: bool, n_skip, key: Optional[Array]
                   ) -> tuple[Array, bool]:
    """How the top-down pass takes the z of a conditional prior (`latent_step`).

    Returns a `[n_layers]` bool over layers 1..n_layers, True for the `n_skip` lowest (whose
    latents take the prior's z in inference; when `sampling` every latent does), and whether
    a prior's z is a sample (with a key, when sampling or with skip_mode='sample') rather
    than its mean.
    """
    from_prior = use_prior_mask(tuple(range(1, n_layers + 1)), n_skip)
    return from_prior, key is not None and (sampling or self.skip_mode == "sample")

  def top_prior(self, batch: int) -> tuple[Array, Array]:
    """Mean and std of the N(0, I) prior of the top latent, `[batch, *latent_shape]` each."""
    kind, feats = self.latents[-1]
    spatial = self.feature_shapes[-1][:2] if kind == "conv" else ()
    return standard_normal((batch, *spatial, feats))

  def generate(self, posteriors, x: Array, n_skip=0, key: Optional[Array] = None) -> ModelOutput:
    """Top-down pass and log p(x|z) given posteriors from `infer` (vmappable over n_skip)."""
    d, kls = self._top_down(posteriors, n_skip, key, x.shape[0])
    return ModelOutput(log_px=self.lik.log_prob(d, x), kl=kls)

  def __call__(self, x: Array, key: Optional[Array], n_skip=0) -> ModelOutput:
    """One-sample bound terms for a batch; n_skip = k gives L^{>k} (0 gives the ELBO)."""
    k_q, k_p = split_key(key, 2)
    return self.generate(self.infer(x, k_q, n_skip), x, n_skip, k_p)

  def sample(self, key: Array, num: int) -> Array:
    """`num` images from the prior: Bernoulli means in [0, 1] or uint8 colour images."""
    k_z, k_x = jax.random.split(key)
    d, _ = self._top_down(None, 0, k_z, num)
    return self.lik.sample_image(d, k_x)

  def reconstruct(self, x: Array, key: Array, n_skip=0) -> Array:
    """Images decoded from the posterior, with the `n_skip` lowest layers from the prior."""
    k_q, k_p, k_x = jax.random.split(key, 3)
    d, _ = self._top_down(self.infer(x, k_q, n_skip), n_skip, k_p, x.shape[0])
    return self.lik.sample_image(d, k_x)
