"""Parameter count of the authors' BIVA (hvae-oodd `--model BIVA`) for configs/cifar_biva.py.

  HVAE_OODD_DIR=.ref/hvae-oodd .venv-ref/bin/python bench/ref_biva_params.py

Builds hvae-oodd's BIVA as scripts/dvae_run.py would, from the first ten stages of
biva-pytorch's CIFAR10 template (the layout of configs/cifar_biva.py), and prints its count.
Runs in the reference's venv (torch); setup in bench/compare_reference.py's docstring.
"""
import json
import os
import sys
import types

sys.path.insert(0, os.environ.get("HVAE_OODD_DIR", ".ref/hvae-oodd"))
# oodd.models imports oodd.datasets (torchvision) only for a checkpointing type hint.
_stub = types.ModuleType("oodd.datasets")
_stub.DataModule = type("DataModule", (), {})
sys.modules["oodd.datasets"] = _stub

import oodd.models  # noqa: E402 pylint: disable=wrong-import-position
import torch  # noqa: E402 pylint: disable=wrong-import-position

FILTERS, LAYERS = 96, 10


def block(kernel: int, stride: int) -> dict:
  return {"block": "ResBlockConv2d", "out_channels": FILTERS, "kernel_size": kernel,
          "stride": stride, "weightnorm": True, "gated": False}


def main():
  det = [[block(5, 1), block(5, 1), block(5, 2)]] + [[block(3, 1)] * 3] * (LAYERS - 1)
  sto = [{"block": "GaussianConv2d", "latent_features": 38 - 2 * i, "weightnorm": True}
         for i in range(LAYERS)]
  cls = oodd.models.dvae.BIVA
  args, _ = cls.get_argparser().parse_known_args(
      ["--likelihood", "DiscretizedLogisticMixLikelihoodConv2d",
       "--config_deterministic", json.dumps(det), "--config_stochastic", json.dumps(sto)])
  args.input_shape = torch.Size((3, 32, 32))
  model = cls(**vars(args))
  print(f"hvae-oodd BIVA, CIFAR10, L={LAYERS}: {sum(p.numel() for p in model.parameters()):,} "
        "parameters")


if __name__ == "__main__":
  main()
