"""Model construction from a config: every model returns `ModelOutput` (see common.py)."""
from hvae_jax.models.build import abstract_params, build_model
from hvae_jax.models.common import ModelOutput
from hvae_jax.models.hvae import HVAE

__all__ = ["HVAE", "ModelOutput", "abstract_params", "build_model"]
