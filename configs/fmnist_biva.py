"""A greyscale BIVA for FashionMNIST (Bernoulli likelihood), vs MNIST.

Default: the FashionMNIST HVAE's layout (hvae-oodd README; 3 layers of three 64-channel
residual blocks, 28x28 -> 14x14 -> 7x7; latents conv 8 at 14x14, dense 16, dense 8), so BIVA
and the HVAE compare like for like and L^{>k} counts the same layers; BIVA has two latents
(BU and TD) in layers 1 and 2 and one in layer 3. 4,588,898 parameters (three deterministic
stacks per layer instead of two). hvae-oodd's BIVA wiring and activations (ELU before the
latent layers), as configs/cifar_biva.py.

`get_config('deep')`: biva-pytorch's binary-image template (`get_deep_vae_mnist`): 6 layers of
three 64-channel blocks ([64,5,1]x2+[64,5,2], then [64,3,1]x3 four times, then
[64,3,1]x2+[64,3,2]: 28 -> 14 -> 7), dense latents 48, 40, 32, 24, 16, 8; about 29 M
parameters, most of them in the dense latents over 14x14x64 features.
Training schedule as the reference's FashionMNIST runs.
"""
from hvae_jax.config import FMNIST_BLOCKS, FMNIST_LATENTS, base_config


def get_config(variant: str = ""):
  c = base_config()
  c.model.name = "biva"
  c.model.likelihood = "bernoulli"
  c.model.latent_activation = "elu"
  if variant == "":
    c.model.blocks = FMNIST_BLOCKS
    c.model.latents = FMNIST_LATENTS
  elif variant == "deep":
    s1 = ((64, 3, 1),) * 3
    c.model.blocks = (((64, 5, 1), (64, 5, 1), (64, 5, 2)),) + (s1,) * 4 + (
        ((64, 3, 1), (64, 3, 1), (64, 3, 2)),)
    c.model.latents = tuple(("dense", n) for n in (48, 40, 32, 24, 16, 8))
  else:
    raise ValueError(f"Unknown fmnist_biva variant {variant!r}; use '' or 'deep'.")
  return c
