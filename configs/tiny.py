"""A seconds-long config for tests and the README smoke run (FashionMNIST, 3 tiny stages)."""
from hvae_jax.config import base_config


def get_config():
  c = base_config()
  c.model.blocks = (((8, 3, 2),), ((8, 3, 2),), ((8, 3, 1),))
  c.model.latents = (("conv", 2), ("dense", 4), ("dense", 2))
  c.train.batch_size = 32
  c.train.epochs = 1.0
  c.train.max_steps = 60
  c.train.warmup_epochs = 0.05
  c.train.free_bits_epochs = 0.05
  c.train.eval_every_epochs = 0.02
  c.train.eval_examples = 256
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 20
  c.train.sample_grid = 16
  c.eval.batch_size = 250
  c.eval.max_examples = 500
  return c
