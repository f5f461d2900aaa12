"""The paper's FashionMNIST HVAE (3 latent layers, 64 channels), trained as the reference."""
from hvae_jax.config import base_config


def get_config():
  return base_config()
