"""Model construction from a config: every model returns `ModelOutput` (see common.py)."""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from hvae_jax.models.common import ModelOutput
from hvae_jax.models.hvae import HVAE

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _as_tuple(x):
  return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def build_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]):
  """The flax module that `config.model` describes, for images `[H, W, C]`."""
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
    from hvae_jax.models.biva import BIVA  # pylint: disable=import-outside-toplevel
    return BIVA(conditional_bu=m.biva_conditional_bu, variant=m.biva_variant, **common)
  raise ValueError(f"Unknown model {m.name!r}; use 'hvae' or 'biva'.")


__all__ = ["HVAE", "ModelOutput", "build_model"]
