"""The paper's FashionMNIST HVAE (3 latent layers, 64 channels), trained as the reference.

Scored as the authors' scripts/ood-llr.py: L^{>k}'s skipped latents at their posterior mean in
the bottom-up pass (skip_inference='mean', the reference's use_mode; the prior's mean top-down
as everywhere). The base config's option, --config.model.skip_inference=sample, shares one
bottom-up pass over every k instead (docs/RESULTS.md, "The paper's estimator against the
authors' scoring, line by line").
"""
from hvae_jax.config import base_config


def get_config():
  c = base_config()
  c.model.skip_inference = "mean"
  return c
