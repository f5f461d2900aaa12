"""The paper's bottom-up hierarchical VAE (Havtorn et al. 2021, Sec. 4; hvae-oodd's `VAE`).

Inference is bottom-up, x -> d_1 -> q(z_1|d_1) -> d_2(z_1) -> q(z_2|d_2) -> ..., with no
top-down merging. Generation is top-down, z_L ~ N(0, I) -> p(z_{L-1}|.) -> ... -> p(x|.).
Skip connections over latents: each inference block also sees the deterministic features of
the stage below, and each generative block the output of the same block of the stage above.

Stage i (1-based) uses `blocks[i-1]` = ((features, kernel, stride), ...) for its inference
stack and the reverse, with transposed/upsampling convs, for its generative stack;
`latents[i-1]` = (kind, features) with kind 'conv' or 'dense'.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from hvae_jax.layers import ResBlock
from hvae_jax.models.common import (AsFeatureMap, Gaussian, HierarchicalModel, latent_step,
                                    split_key)

Array = jax.Array
BlockSpec = tuple[int, int, int]


def stage_feature_shapes(image_shape: Sequence[int],
                         blocks: Sequence[Sequence[BlockSpec]]) -> list[tuple[int, int, int]]:
  """Shape `(h, w, c)` of each stage's deterministic output d_i, checking the strides fit."""
  h, w, _ = image_shape
  shapes = []
  for i, stage in enumerate(blocks):
    for f, _, s in stage:
      if h % s or w % s:
        raise ValueError(
            f"Stage {i + 1} strides {s} over a {h}x{w} feature map, which does not divide "
            f"evenly, so generation could not mirror it; pick strides that divide the image "
            f"size {tuple(image_shape[:2])}.")
      h, w = h // s, w // s
    shapes.append((h, w, stage[-1][0]))
  return shapes


class HVAE(HierarchicalModel):
  """Bottom-up hierarchical VAE with L = len(blocks) latent layers.

  Images are `[batch, height, width, channels]`: binarized floats for the Bernoulli
  likelihood, uint8 for the discretized logistic mixture ('dmol').
  """

  @property
  def latent_layers(self) -> tuple[int, ...]:
    """Hierarchy level of each latent (one latent per layer here)."""
    return tuple(range(1, len(self.latents) + 1))

  def setup(self):
    if len(self.blocks) != len(self.latents):
      raise ValueError(f"model.blocks has {len(self.blocks)} stages but model.latents has "
                       f"{len(self.latents)}; give one latent per stage.")
    self.check_modes()
    self.feature_shapes = shapes = stage_feature_shapes(self.image_shape, self.blocks)
    n = len(self.blocks)
    block = lambda spec, transposed, residual: ResBlock(
        spec[0], spec[1], spec[2], transposed, residual, self.activation, self.upsample, self.dtype)
    # The first inference block of stage 1 sees the raw image: no residual, as the reference.
    self.q_blocks = [[block(spec, False, i > 0 or j > 0) for j, spec in enumerate(stage)]
                     for i, stage in enumerate(self.blocks)]
    self.q_latents = [self.make_latent(spec) for spec in self.latents]
    self.q_proj = [AsFeatureMap(shapes[i], self.dtype) for i in range(n - 1)]
    self.p_latents = [self.make_latent(spec) for spec in self.latents[:-1]]
    self.p_proj = [AsFeatureMap(shapes[i], self.dtype) for i in range(n)]
    self.p_blocks = [[block(spec, True, j > 0) for j, spec in enumerate(reversed(stage))]
                     for stage in self.blocks]
    self.lik = self.make_likelihood()

  def infer(self, x: Array, key: Optional[Array], n_skip=0) -> tuple[Gaussian, ...]:
    """Bottom-up pass: the posterior of every latent, lowest first, each with its z.

    z is a sample, or the mean for the `n_skip` lowest with skip_inference='mean' and for
    every latent when `key` is None.
    """
    h_in = self.network_input(x)
    aux = None
    posteriors = []
    keys = split_key(key, len(self.q_latents))
    at_mean = self.at_mean_in_inference(self.latent_layers, n_skip)
    for i, (stage, q_latent) in enumerate(zip(self.q_blocks, self.q_latents)):
      h = h_in
      for blk in stage:
        h = blk(h, aux)
      q = q_latent(h, keys[i])
      q = q.replace(z=jnp.where(at_mean[i], q.mean, q.z))
      posteriors.append(q)
      if i < len(self.q_proj):
        h_in, aux = self.q_proj[i](q.z), h
    return tuple(posteriors)

  def _top_down(self, posteriors: Optional[Sequence[Gaussian]], n_skip, key: Optional[Array],
                batch: int) -> tuple[Array, tuple[Array, ...]]:
    """Top-down pass. Returns the last features d `[batch, H, W, c]` and the KL terms.

    Latent i takes the posterior's z_i unless it is among the `n_skip` lowest, or no
    posteriors are given (sampling); then it comes from its conditional prior p(z_i | z_>i)
    (its mean with skip_mode='mean', as the reference, or without a key; else a sample) and
    its KL is dropped.
    """
    n = len(self.latents)
    from_prior, sample_prior = self.prior_choice(n, posteriors is None, n_skip, key)
    keys = split_key(key, n)
    d, aux_list, kls = None, None, [None] * n
    for i in reversed(range(n)):
      if i == n - 1:
        p_mean, p_std = self.top_prior(batch)
      else:
        p = self.p_latents[i](d, None)
        p_mean, p_std = p.mean, p.std
      q = None if posteriors is None else posteriors[i]
      z, kls[i] = latent_step(q, p_mean, p_std, from_prior[i], keys[i], sample_prior)
      h = self.p_proj[i](z)
      new_aux = []
      for j, blk in enumerate(self.p_blocks[i]):
        h = blk(h, None if aux_list is None else aux_list[j])
        new_aux.append(h)
      d, aux_list = h, new_aux
    return d, tuple(kls)
