"""Shared fixtures-as-functions for the model, OOD and training tests."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from hvae_jax import data, layers, ood, preprocess
from hvae_jax.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("HVAE_DATA_DIR") or os.path.join(REPO, "..", "shared", "data")


def tiny_config(**overrides):
  from configs import tiny  # pylint: disable=import-outside-toplevel
  c = tiny.get_config()
  c.data.data_dir = DATA_DIR
  for dotted, v in overrides.items():
    node = c
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def fmnist_slice(n, split="test", seed=0):
  """`n` real FashionMNIST images (uint8 [n, 28, 28, 1]), a seeded shuffle of the split."""
  x = data.load_images("fashion_mnist", split, DATA_DIR, "npz")
  return x[np.random.default_rng(seed).permutation(len(x))[:n]]


def mnist_slice(n, seed=0):
  x = data.load_images("mnist", "test", DATA_DIR, "npz")
  return x[np.random.default_rng(seed).permutation(len(x))[:n]]


def indexed_images(n: int) -> np.ndarray:
  """uint8 `[n, 2, 2, 1]` images whose pixels all equal their index."""
  return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 1)).copy()


def ids(batch: np.ndarray) -> list[int]:
  """Example ids of a batch of `indexed_images`."""
  return [int(v) for v in batch[:, 0, 0, 0]]


def idx_bytes(images: np.ndarray) -> bytes:
  """An idx file as the official ones: magic 0x0803 for uint8 3-D, big-endian dims, pixels."""
  return (bytes([0, 0, 0x08, images.ndim]) + np.asarray(images.shape, ">u4").tobytes()
          + images.tobytes())


def tiny_model_and_params(config=None, image_shape=(28, 28, 1), seed=0):
  """A model and its (data-dependently initialised) params; the default tiny one is cached."""
  if config is None:
    return _default_tiny(seed)
  return _init(config, image_shape, seed)


@functools.lru_cache(maxsize=None)
def _default_tiny(seed):
  return _init(tiny_config(), (28, 28, 1), seed)


def _init(config, image_shape, seed):
  model = build_model(config, image_shape)
  if config.model.likelihood == "dmol":
    x = np.random.default_rng(seed).integers(0, 256, (16, *image_shape), dtype=np.uint8)
  else:
    x = preprocess.eval_binarize(fmnist_slice(64, "train", seed), seed)
  params = layers.init_params(model, jax.random.key(seed), x, jax.random.key(1))
  return model, params


# The multi-process test: a few steps of the tiny config, a checkpoint every 10, 200 scores.
MULTIPROCESS_IMAGES = 200


def multiprocess_config(max_steps):
  return tiny_config(train__max_steps=max_steps, train__checkpoint_every_steps=10,
                     train__eval_every_epochs=100.0, train__log_every_steps=10,
                     train__sample_grid=4)


def check_terms_sum_back(model, params, x):
  """Every pass's per-layer terms (flatten_scores' names) sum back to its bound (S = 1), and
  the L^{>k} pass has no KL term for the k lowest layers."""
  ks = tuple(range(1, ood.max_k(model) + 1))
  s = ood.make_image_score_fn(model, ks)(params, x, np.zeros((len(x), 2), np.uint32))
  kl = lambda prefix: sum(v for n, v in s.items() if n.startswith(prefix))
  np.testing.assert_allclose(s["recon"] - kl("kl_l"), s["elbo"], rtol=1e-6, atol=1e-4)
  for k in ks:
    np.testing.assert_allclose(s[f"recon_k{k}"] - kl(f"kl_k{k}_"), s[f"lk_k{k}"], rtol=1e-6,
                               atol=1e-4)
    below = [n for n in s if n.startswith(f"kl_k{k}_l") and int(n[len(f"kl_k{k}_l")]) <= k]
    assert not below, below
  for n, v in s.items():
    assert v.dtype == jnp.float32 and v.shape == (len(x),) and bool(jnp.all(jnp.isfinite(v))), n
  return s

