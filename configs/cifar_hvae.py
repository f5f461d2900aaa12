"""The reference's CIFAR10 HVAE (hvae-oodd README): 3 stages of 256-channel blocks, DMoL likelihood.

The paper reports L^{>3} for CIFAR10, i.e. L = 4; `get_config('l4')` adds a 4th stage
(a 256-channel dense latent of 32 units over 4x4 features) to get that variant.
"""
from hvae_jax.config import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.data.name = "cifar10"
  c.data.ood = ("svhn_cropped",)
  c.model.likelihood = "dmol"
  c.model.blocks = (((256, 5, 1), (256, 5, 1), (256, 5, 2)),
                    ((256, 3, 1), (256, 3, 1), (256, 3, 2)),
                    ((256, 3, 1), (256, 3, 1), (256, 3, 2)))
  c.model.latents = (("conv", 128), ("conv", 64), ("dense", 32))
  c.train.epochs = 2000.0
  if variant == "l4":
    c.model.blocks = c.model.blocks + (((256, 3, 1), (256, 3, 1), (256, 3, 1)),)
    c.model.latents = (("conv", 128), ("conv", 64), ("conv", 32), ("dense", 32))
  elif variant:
    raise ValueError(f"Unknown cifar_hvae variant {variant!r}; use '' or 'l4'.")
  return c
