"""The bound and the training loss, as arithmetic on a model's per-layer terms.

bound = log p(x|z) - sum_i [log q(z_i|.) - log p(z_i|.)]         (one sample, nats)

With `ModelOutput` from `model(x, key, n_skip=0)` this is the ELBO; with `n_skip=k` it is
the paper's L^{>k} (eq. 5), whose KL sum only runs over i > k because the model zeroes the
KL of latents drawn from the prior.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from hvae_jax import distributions as dist
from hvae_jax.models.common import ModelOutput

Array = jax.Array


def kl_per_latent(out: ModelOutput) -> Array:
  """`[batch, n_latents]`: each latent's KL summed over its dimensions."""
  return jnp.stack([dist.sum_per_example(k) for k in out.kl], axis=-1)


def bound(out: ModelOutput) -> Array:
  """`[batch]` single-sample bound in nats: the ELBO, or L^{>k} for n_skip = k."""
  return out.log_px - kl_per_latent(out).sum(-1)


def bits_per_dim(nats: Array, image_shape) -> Array:
  """-nats / (D ln 2) with D = H * W * C."""
  return -nats / (math.prod(image_shape) * math.log(2.0))


def free_bits(kl: Array, budget) -> Array:
  """Free bits (Kingma et al. 2016) on one latent's elementwise KL `[batch, ..., c]`.

  Each element's KL is max(KL, budget / c): the budget is shared over the latent's feature
  (channel) axis, as the reference's FreeNats(shared_dims=1) does.
  """
  return jnp.maximum(kl, budget / kl.shape[-1])


def kl_warmup(epoch: Array, warmup_epochs: float) -> Array:
  """Deterministic warm-up weight beta rising linearly from 0 to 1 over `warmup_epochs`."""
  if warmup_epochs <= 0:
    return jnp.asarray(1.0)
  return jnp.clip(epoch / warmup_epochs, 0.0, 1.0)


def free_bits_budget(epoch: Array, free_bits_value: float, free_bits_epochs: float) -> Array:
  """Free-bits budget: constant for the first half of `free_bits_epochs`, then linearly to 0.

  Mirrors the reference's FreeNatsCooldown(constant = cooldown = free_nats_epochs / 2).
  """
  if free_bits_epochs <= 0:
    return jnp.asarray(0.0)
  half = free_bits_epochs / 2
  frac = jnp.clip((epoch - half) / half, 0.0, 1.0)
  return free_bits_value * (1.0 - frac)


def training_loss(out: ModelOutput, beta, budget) -> tuple[Array, dict[str, Array]]:
  """Mean over the batch of -(log p(x|z) - beta * sum_i free_bits(KL_i)), and metrics.

  Metrics report the plain ELBO (no free bits, beta = 1) so they are comparable across steps.
  """
  kl_fb = jnp.stack([dist.sum_per_example(free_bits(k, budget)) for k in out.kl], -1)
  loss = -jnp.mean(out.log_px - beta * kl_fb.sum(-1))
  kl = kl_per_latent(out)
  metrics = {
      "loss": loss,
      "elbo": jnp.mean(out.log_px - kl.sum(-1)),
      "log_px": jnp.mean(out.log_px),
      "kl": jnp.mean(kl, axis=0),  # [n_latents]
  }
  return loss, metrics
