"""Parameter count of the authors' BIVA (hvae-oodd `--model BIVA`) for configs/cifar_biva.py.

  HVAE_OODD_DIR=.ref/hvae-oodd .venv-ref/bin/python bench/ref_biva_params.py

Builds hvae-oodd's BIVA as scripts/dvae_run.py would for configs/cifar_biva.py's layout (the
first ten stages of biva-pytorch's CIFAR10 template; bench/reference_model.py writes it as
the README writes configs) and prints its count. Needs torch, the hvae-oodd checkout and, for
reading our config, this package (a venv with system site packages has both).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import reference_model as rm  # noqa: E402 pylint: disable=wrong-import-position
from hvae_jax import config as config_lib  # noqa: E402 pylint: disable=wrong-import-position


def main():
  config = config_lib.load_config("cifar_biva")
  model = rm.build(rm.reference_spec(config))
  print(f"hvae-oodd BIVA, CIFAR10, L={len(config.model.blocks)}: {rm.n_params(model):,} "
        "parameters")


if __name__ == "__main__":
  main()
