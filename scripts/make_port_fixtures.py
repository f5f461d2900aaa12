"""Writes tests/fixtures/port/: tiny hvae-oodd models and their float32/float64 outputs.

  HVAE_OODD_DIR=.ref/hvae-oodd python scripts/make_port_fixtures.py [--out tests/fixtures/port]

Needs torch and the hvae-oodd checkout (bench/reference_model.py); the tests that read the
fixtures (tests/unit/test_port.py) need neither. For each fixture (the FashionMNIST VAE with its
Bernoulli likelihood, the CIFAR10-style VAE with the logistic mixture, and BIVA with it), at
the size of configs/tiny.py: the reference model dvae_run.py builds for the config (seeded),
its data-dependent init on a batch of images and TRAIN_STEPS Adam steps on the ELBO (one
thread, seeded), so that weight norm, priors, posteriors and the mixture are all away from
init; then its terms on 8 other images, every latent at its mean, for every k, in float32 and
float64 (bench/reference_model.py, `scores_f32_f64`).

Images: 32x32 patches of scikit-learn's two sample photographs (colour), or their grey levels
cut to 28x28 and binarized with a seeded draw (FashionMNIST-shaped): nothing to download.

Files per fixture NAME: NAME.json (class name, the constructor kwargs as dvae_run.py saves them,
our config) and NAME.npz (`state/<key>` the state dict, `x` the scored images in our format,
`f32_*` / `f64_*` the reference's terms).
"""
import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import reference_model as rm  # noqa: E402  pylint: disable=wrong-import-position
from bench.reference_equivalence import colour_patches  # noqa: E402  pylint: disable=wrong-import-position
from hvae_jax import config as config_lib  # noqa: E402  pylint: disable=wrong-import-position

N_IMAGES = 8
TRAIN_STEPS = 50
# 32 -> 16 -> 8 -> 8; hvae-oodd's VAE needs as many blocks in every stage (its skips pair them).
_COLOUR_BLOCKS = [[[8, 5, 1], [8, 5, 2]], [[8, 3, 1], [8, 3, 2]], [[8, 3, 1], [8, 3, 1]]]
# name -> our config: configs/tiny.py with these changes.
FIXTURES = {
    "fmnist_vae": {},
    "cifar_vae_dmol": {"data.name": "cifar10", "model.likelihood": "dmol",
                       "model.blocks": _COLOUR_BLOCKS,
                       "model.latents": [["conv", 4], ["conv", 2], ["dense", 2]]},
    "cifar_biva_dmol": {"data.name": "cifar10", "model.likelihood": "dmol", "model.name": "biva",
                        "model.blocks": _COLOUR_BLOCKS,
                        "model.latents": [["conv", 4], ["conv", 3], ["dense", 2]]},
}


def fixture_images(dmol: bool, seed: int = 0):
  """(training images, scored images), ours: uint8 colour or {0, 1} float32 28x28 grey."""
  train, test = colour_patches(N_IMAGES, seed)
  if dmol:
    return train, test
  grey = lambda x: x.mean(-1, keepdims=True)[:, 2:30, 2:30] / 255
  rng = np.random.default_rng(seed)
  binary = lambda x: (rng.uniform(size=grey(x).shape) < grey(x)).astype(np.float32)
  return binary(train), binary(test)


def json_kwargs(kwargs: dict) -> dict:
  """The constructor kwargs as JSON values (input_shape is a torch.Size)."""
  return {k: list(v) if k == "input_shape" else v for k, v in kwargs.items()}


def make(name: str, overrides: dict, seed: int = 0) -> tuple[dict, dict]:
  """(the fixture's JSON, its arrays)."""
  torch, oodd = rm.import_oodd()
  torch.set_num_threads(1)
  oodd.utils.set_seed(seed)
  config = config_lib.load_config("tiny", overrides)
  dmol = config.model.likelihood == "dmol"
  model = rm.build(rm.reference_spec(config))
  x_train, x = fixture_images(dmol, seed)
  rm.train(model, rm.as_input(x_train, dmol), TRAIN_STEPS, 16, seed, lr=1e-3)
  state = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
  arrays = dict(state, x=x, **rm.scores_f32_f64(model, rm.as_input(x, dmol), N_IMAGES))
  meta = dict(class_name=type(model).__name__, kwargs=json_kwargs(model.kwargs),
              config=overrides)
  return meta, arrays


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "port"))
  a = ap.parse_args()
  os.makedirs(a.out, exist_ok=True)
  for name, overrides in FIXTURES.items():
    meta, arrays = make(name, overrides)
    with open(os.path.join(a.out, f"{name}.json"), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
      f.write("\n")
    np.savez_compressed(os.path.join(a.out, f"{name}.npz"), **arrays)
    print(f"wrote {name}: {sum(v.size for k, v in arrays.items() if k.startswith('state/')):,} "
          f"state entries")


if __name__ == "__main__":
  main()
