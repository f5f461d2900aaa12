"""A model from its config, and its parameter tree's shapes without running its init."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hvae_jax import data
from hvae_jax.models.biva import BIVA
from hvae_jax.models.common import HierarchicalModel
from hvae_jax.models.hvae import HVAE

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What each likelihood reads: binarized floats or uint8 colour values; config.validate checks
# that it is the one the data set's kind ('binary' or 'discrete') is fed as.
_INPUT_DTYPES = {"bernoulli": np.float32, "dmol": np.uint8}


def _as_tuple(x):
  return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def build_model(config: ml_collections.ConfigDict,
                image_shape: Optional[Sequence[int]] = None) -> HierarchicalModel:
  """The flax module `config.model` describes (HVAE or BIVA), for images `[H, W, C]`.

  `image_shape` defaults to the shape of `config.data.name`'s images (`data.config_spec`).
  Use the module as any flax module: `model.init(key, x, key)`, `model.apply(variables, x, key, n_skip=k)` for the
  bound terms of L^{>k}, `model.apply(variables, key, num, method=model.sample)` for prior
  samples and `model.apply(variables, x, key, n_skip, method=model.reconstruct)`.
  """
  if image_shape is None:
    image_shape = data.config_spec(config).image_shape
  m = config.model
  common = dict(image_shape=tuple(int(v) for v in image_shape), likelihood=m.likelihood,
                num_mix=m.num_mix, activation=m.activation,
                latent_activation=m.latent_activation,
                likelihood_activation=m.likelihood_activation, latent_kernel=m.latent_kernel,
                upsample=m.upsample, skip_mode=m.skip_mode, skip_inference=m.skip_inference,
                colour_input=m.colour_input, dtype=_DTYPES[m.dtype])
  common.update(blocks=_as_tuple(m.blocks), latents=_as_tuple(m.latents))
  if m.name == "hvae":
    return HVAE(**common)
  if m.name == "biva":
    return BIVA(conditional_bu=m.biva_conditional_bu, variant=m.biva_variant, **common)
  raise ValueError(f"Unknown model {m.name!r}; use 'hvae' or 'biva'.")


def abstract_params(model: nn.Module, image_shape: Sequence[int]) -> Any:
  """`model.init(...)["params"]` as a tree of `jax.ShapeDtypeStruct`, traced, never run.

  The shapes depend on the images' `[H, W, C]` only; the traced input is one image of the
  dtype the model's likelihood reads (float32 for 'bernoulli', uint8 for 'dmol').
  """
  x = jax.ShapeDtypeStruct((1, *image_shape), _INPUT_DTYPES[model.likelihood])
  return jax.eval_shape(model.init, jax.random.key(0), x, jax.random.key(0))["params"]
