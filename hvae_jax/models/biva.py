"""BIVA, the bidirectional-inference VAE (Maaloe et al. 2019), as the paper trains it for CIFAR10.

Layers i = 1 (lowest) .. L (top). Every layer below the top has two latents, a bottom-up one
z^BU_i and a top-down one z^TD_i; the top layer has one, z_L. As hvae-oodd's `BivaStage`
(`BivaIntermediateStage`, `BivaTopStage`, from biva-pytorch), each stage holds three
deterministic stacks: bottom-up inference (BU), top-down inference (TD) and generative.

Inference, `infer` (bottom-up over the stages, x_BU = x_TD = x at stage 1):
  h^BU_i = BU_i(x^BU_i; aux = [h^BU_{i-1}, h^TD_{i-1}])     q(z^BU_i | h^BU_i), sampled here
  h^TD_i = TD_i(x^TD_i; aux = h^BU_i)                     x^BU_{i+1} = z^BU_i, x^TD_{i+1} = h^TD_i
  top:    q(z_L | merge(concat(h^BU_L, h^TD_L)))
The TD posterior also needs the generative state, so it is formed (and sampled) in `generate`:
  q(z^TD_i | merge_i(h^TD_i; aux = d_{i+1}))
where d_{i+1} is the output of the generative stack of layer i+1: the top-down inference path
merges the bottom-up features with the top-down state.

Generation, `generate` (top-down): z_L ~ N(0, I) -> generative stack L -> d_L;
  p(z^TD_i | d_{i+1}),  p(z^BU_i | d_{i+1})  (or, with `conditional_bu`,
  p(z^BU_i | block(z^TD_i; aux = d_{i+1})): the BU prior conditioned on z^TD_i),
  then concat(z^TD_i, z^BU_i) -> generative stack i -> d_i; ... -> p(x | d_1).
Skip connections: block j of generative stack i also takes the output of block j of stack
i+1 (so the latents above reach the layers below), and every BU block takes the previous
stage's BU and TD features.

Stage i (1-based) uses `blocks[i-1]` = ((features, kernel, stride), ...) for both inference
stacks, the reverse with transposed/upsampling convs for its generative stack, and
`latents[i-1]` = (kind, features) for both of its latents (kind 'conv' or 'dense').

Two wirings (`variant`), the same layers otherwise:
  'hvae-oodd' (default): what the authors' code behind the paper's numbers (hvae-oodd's
    `BivaStage`) computes, three departures from BIVA as published included:
    (1) a block ignores an aux input of exactly its own shape (ResBlockConv2d builds no aux
        op for it), so only the skips that change resolution or channels act;
    (2) the TD merge is built with an aux of its own shape, so by (1) q(z^TD_i | .) ignores
        the top-down state d_{i+1} and sees h^TD_i alone;
    (3) its intermediate stages mute the BU skip input [h^BU_{i-1}, h^TD_{i-1}] on
        `if skip_stochastic: aux_shape = None` (inverted: the top stage tests `not`), so only
        the top stage's BU blocks see it.
    Its generative stacks run each stage's block list in the inference order (strided block
    last, transposed), not reversed.
  'biva-pytorch': every connection above acts, as in biva-pytorch: a same-shape aux enters
    through a 1x1 conv (`ResBlock(same_shape_aux=True)`), the TD merge sees d_{i+1}, every
    stage's BU blocks see the stage below, and the generative stacks mirror the inference
    ones (reversed, as our HVAE). `conditional_bu` needs this variant (hvae-oodd's does not
    build).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax
import jax
import jax.numpy as jnp

from hvae_jax.layers import ResBlock
from hvae_jax.models.common import (AsFeatureMap, Gaussian, HierarchicalModel, latent_step,
                                    split_key)
from hvae_jax.models.hvae import stage_feature_shapes

Array = jax.Array
BlockSpec = tuple[int, int, int]
VARIANTS = ("hvae-oodd", "biva-pytorch")


@flax.struct.dataclass
class StagePosterior:
  """What `infer` gives for a layer below the top.

  bu: q(z^BU_i | x) with its sample. h_td: the TD inference features `[batch, h, w, c]`;
  `generate` merges them with the top-down state into q(z^TD_i | x, z_{>i}).
  """
  bu: Gaussian
  h_td: Array


def _run(stack, h: Array, aux, declared: Optional[tuple[int, int, int]] = None
         ) -> tuple[Array, list[Array]]:
  """A block stack; `aux` is one array for every block, a per-block list, or None.

  `declared` (hvae-oodd's generative stacks): the `(h, w, c)` its blocks were built to take
  as aux, the stage's own feature shape; a block whose conv1 output has that shape built no
  aux op and ignores its skip, whatever the skip's shape (departure 1).
  """
  per_block = isinstance(aux, (list, tuple))
  outs = []
  for j, blk in enumerate(stack):
    a = (aux[j] if j < len(aux) else None) if per_block else aux
    if declared is not None and (*h.shape[1:3], blk.features) == tuple(declared):
      a = None
    h = blk(h, a)
    outs.append(h)
  return h, outs


class BIVA(HierarchicalModel):
  """BIVA with L = len(blocks) layers: 2 latents per layer below the top, 1 at the top.

  `ModelOutput.kl` has 2L - 1 entries ordered lowest layer first and, within a layer,
  bottom-up latent first: (z^BU_1, z^TD_1, z^BU_2, z^TD_2, ..., z^BU_{L-1}, z^TD_{L-1}, z_L),
  as hvae-oodd orders its stage data; `latent_layers` = (1, 1, 2, 2, ..., L-1, L-1, L) gives
  each entry's layer.

  n_skip = k (the paper's L^{>k}): "the k lowest latents" means the k lowest LAYERS, both
  streams of each, following the paper and hvae-oodd (whose `decode_from_p` is per stage):
  z^TD_i and z^BU_i for i <= k come from their conditional priors (the mean with
  skip_mode='mean', as the reference; a sample with 'sample') and their KL terms are zero;
  layers above k keep their posterior samples and KL terms. k ranges over 0 .. L-1.

  Images are `[batch, height, width, channels]`: binarized floats for the Bernoulli
  likelihood, uint8 for the discretized logistic mixture ('dmol').
  """
  conditional_bu: bool = False
  variant: str = "hvae-oodd"

  @property
  def latent_layers(self) -> tuple[int, ...]:
    """Layer (1 = lowest) of each KL entry: (1, 1, 2, 2, ..., L-1, L-1, L)."""
    n = len(self.blocks)
    return tuple(i for i in range(1, n) for _ in range(2)) + (n,)

  @property
  def latent_names(self) -> tuple[str, ...]:
    """(l1_bu, l1_td, ..., l<L-1>_bu, l<L-1>_td, l<L>), in `latent_layers`' order."""
    n = len(self.blocks)
    return tuple(f"l{i}_{s}" for i in range(1, n) for s in ("bu", "td")) + (f"l{n}",)

  def setup(self):
    n = len(self.blocks)
    if n != len(self.latents):
      raise ValueError(f"model.blocks has {n} stages but model.latents has "
                       f"{len(self.latents)}; give one latent spec per BIVA layer (used for both "
                       f"its BU and TD latents).")
    if n < 2:
      raise ValueError("BIVA needs at least 2 layers (model.blocks with >= 2 stages).")
    self.check_modes()
    if self.variant not in VARIANTS:
      raise ValueError(f"BIVA variant must be one of {VARIANTS}, got {self.variant!r}.")
    published = self.variant == "biva-pytorch"
    if self.conditional_bu and not published:
      raise ValueError("conditional_bu is a biva-pytorch option (hvae-oodd's BIVA does not build "
                       "with it): set model.biva_variant = 'biva-pytorch'.")
    self.feature_shapes = shapes = stage_feature_shapes(self.image_shape, self.blocks)
    block = lambda spec, transposed=False, residual=True, stride=None: ResBlock(
        spec[0], spec[1], spec[2] if stride is None else stride, transposed, residual,
        self.activation, self.upsample, self.dtype, same_shape_aux=published)
    latent = self.make_latent
    # Inference: the first block of stage 1 sees the raw image (no residual, as the reference).
    inference_stack = lambda i, stage: [block(spec, residual=i > 0 or j > 0)
                                        for j, spec in enumerate(stage)]
    self.q_bu_blocks = [inference_stack(i, stage) for i, stage in enumerate(self.blocks)]
    self.q_td_blocks = [inference_stack(i, stage) for i, stage in enumerate(self.blocks)]
    inter = range(n - 1)
    self.q_bu_latents = [latent(self.latents[i]) for i in inter]
    self.bu_proj = [AsFeatureMap(shapes[i], self.dtype) for i in inter]
    # Top: merge BU and TD features with a stride-1 block of the stage's last spec.
    self.q_top = block(self.blocks[-1][-1], stride=1)
    self.q_top_latent = latent(self.latents[-1])
    # TD posterior: merge h^TD_i with the top-down state (stride-1 block of the last spec).
    self.td_merge = [block(self.blocks[i][-1], stride=1) for i in inter]
    self.q_td_latents = [latent(self.latents[i]) for i in inter]
    self.p_td_latents = [latent(self.latents[i]) for i in inter]
    self.p_bu_latents = [latent(self.latents[i]) for i in inter]
    if self.conditional_bu:
      self.bu_cond_proj = [AsFeatureMap(shapes[i], self.dtype) for i in inter]
      self.bu_cond = [block(self.blocks[i][-1], residual=False, stride=1) for i in inter]
    self.z_proj = [AsFeatureMap(shapes[i], self.dtype) for i in range(n)]
    self.p_blocks = [[block(spec, transposed=True, residual=j > 0)
                      for j, spec in enumerate(reversed(stage) if published else stage)]
                     for stage in self.blocks]
    self.lik = self.make_likelihood()

  def infer(self, x: Array, key: Optional[Array], n_skip=0) -> tuple[Any, ...]:
    """Bottom-up pass, lowest layer first: a `StagePosterior` per layer below the top (the
    BU posterior with its z and the TD features), then the top posterior `Gaussian`.

    z^BU_i is a sample, or the mean for the `n_skip` lowest layers with
    skip_inference='mean' and for every layer when `key` is None.
    """
    n = len(self.blocks)
    h_in = self.network_input(x)
    x_bu, x_td, aux = h_in, h_in, None
    keys = split_key(key, n)
    at_mean = self.at_mean_in_inference(tuple(range(1, n)), n_skip)  # BU latents, per layer
    posteriors = []
    for i in range(n):
      h_bu, _ = _run(self.q_bu_blocks[i], x_bu, aux)
      h_td, _ = _run(self.q_td_blocks[i], x_td, h_bu)
      if i < n - 1:
        q_bu = self.q_bu_latents[i](h_bu, keys[i])
        q_bu = q_bu.replace(z=jnp.where(at_mean[i], q_bu.mean, q_bu.z))
        posteriors.append(StagePosterior(bu=q_bu, h_td=h_td))
        x_bu, x_td = self.bu_proj[i](q_bu.z), h_td
        # hvae-oodd: only the top stage's BU blocks see the stage below (departure 3).
        aux = (jnp.concatenate([h_bu, h_td], axis=-1)
               if self.variant == "biva-pytorch" or i == n - 2 else None)
      else:
        h = self.q_top(jnp.concatenate([h_bu, h_td], axis=-1))
        posteriors.append(self.q_top_latent(h, keys[i]))
    return tuple(posteriors)

  def _top_down(self, posteriors: Optional[Sequence[Any]], n_skip, key: Optional[Array],
                batch: int) -> tuple[Array, tuple[Array, ...]]:
    """Top-down pass. Returns the last features d `[batch, H, W, c]` and the KL terms.

    Both latents of a layer among the `n_skip` lowest (or every latent, when no posteriors
    are given: sampling) come from their conditional priors, mean or sample per skip_mode,
    and get zero KL; the others take the posterior's z and the MC KL log q - log p. Without a
    key every latent takes its mean (q(z^TD_i | .) too).
    """
    n = len(self.blocks)
    from_prior, sample_prior = self.prior_choice(n, posteriors is None, n_skip, key)
    keys = split_key(key, 3 * n)
    kls: list[Any] = [None] * (2 * n - 1)  # (bu_1, td_1, ..., bu_{L-1}, td_{L-1}, top)
    d, skips = None, None
    for i in reversed(range(n)):
      k_q, k_td, k_bu = keys[3 * i], keys[3 * i + 1], keys[3 * i + 2]
      if i == n - 1:
        q = None if posteriors is None else posteriors[i]
        z, kls[-1] = latent_step(q, *self.top_prior(batch), from_prior[i], k_td, sample_prior)
      else:
        # Top-down latent: prior p(z^TD_i | d), posterior q(z^TD_i | merge(h^TD_i, d)).
        p_td = self.p_td_latents[i](d, None)
        q_td = None
        if posteriors is not None:
          merge_aux = d if self.variant == "biva-pytorch" else None  # departure 2
          q_td = self.q_td_latents[i](self.td_merge[i](posteriors[i].h_td, merge_aux), k_q)
        z_td, kl_td = latent_step(q_td, p_td.mean, p_td.std, from_prior[i], k_td, sample_prior)
        # Bottom-up latent: prior p(z^BU_i | d) (or conditioned on z^TD_i), posterior from infer.
        d_bu = d
        if self.conditional_bu:
          d_bu = self.bu_cond[i](self.bu_cond_proj[i](z_td), d)
        p_bu = self.p_bu_latents[i](d_bu, None)
        q_bu = None if posteriors is None else posteriors[i].bu
        z_bu, kl_bu = latent_step(q_bu, p_bu.mean, p_bu.std, from_prior[i], k_bu, sample_prior)
        kls[2 * i], kls[2 * i + 1] = kl_bu, kl_td
        z = jnp.concatenate([z_td, z_bu], axis=-1)
      h = self.z_proj[i](z)
      declared = None if self.variant == "biva-pytorch" else self.feature_shapes[i]
      d, skips = _run(self.p_blocks[i], h, skips, declared)
    return d, tuple(kls)
