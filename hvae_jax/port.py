"""The authors' PyTorch models (hvae-oodd) as hvae-jax models: reading, checks, the converter.

  python -m hvae_jax.port --reference_checkpoint=models/FashionMNISTBinarized-<time>/ \
      --config=configs/fmnist_hvae.py --out=workdirs/fmnist_ported
  python -m hvae_jax.port --reference_checkpoint=models/CIFAR10Dequantized-<time>/ \
      --config=configs/cifar_biva.py --out=workdirs/cifar_biva_ported
  python evaluate.py --checkpoint=workdirs/fmnist_ported --ood=mnist

A trained hvae-oodd model is the directory `scripts/dvae_run.py` saves into with
`BaseModule.save`: `model_class_name.pt` ('VAE', the paper's HVAE, or 'BIVA'),
`model_kwargs.pt` (the constructor's arguments: config_deterministic, config_stochastic,
likelihood, activation, ...) and `model_state_dict.pt` (the `state_dict()`);
`--reference_checkpoint` is that directory or the state-dict file itself. Both likelihoods
port: Bernoulli (FashionMNIST) and the discretized logistic mixture (CIFAR10). The output is
a training-style checkpoint (`OUT/checkpoints/0/` plus `OUT/config.json`) that
`hvae_jax.load_model` and `evaluate.py --checkpoint` load. The weight mapping itself is
hvae_jax/port_mapping.py (numpy only); `port_reference` maps a state dict already in memory.

The reference's activations, which the converter sets in the config: its one `activation`
(ReLU by default) in every block; before the latent layers the same for the VAE, but ELU for
BIVA (its stages do not pass `activation` to their stochastic layers, whose default is ELU);
before the likelihood's parameter layer the same for Bernoulli, none for the logistic mixture
(its module skips the activation). Its encoder sees colour images as k / 255
(model.colour_input 'unit'); BIVA is hvae-oodd's wiring (model.biva_variant 'hvae-oodd').

torch is imported only here, lazily: an optional extra (`pip install torch`, the CPU build is
enough), not a dependency of the package.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from hvae_jax import checkpoints, cli, config as config_lib, data, training
from hvae_jax.models import build_model
from hvae_jax.port_mapping import PortError, port_params

STATE_DICT_FILE = "model_state_dict.pt"
KWARGS_FILE = "model_kwargs.pt"
CLASS_NAME_FILE = "model_class_name.pt"
# hvae-oodd model classes (dvae_run.py --model) -> our config.model.name.
MODELS = {"VAE": "hvae", "BIVA": "biva"}
# torch.nn activation class names of the reference -> ours (LeakyReLU: slope 0.01 in both).
ACTIVATIONS = {"ReLU": "relu", "ELU": "elu", "LeakyReLU": "leaky_relu", "Swish": "swish"}
LIKELIHOODS = {"BernoulliLikelihoodConv2d": "bernoulli",
               "DiscretizedLogisticMixLikelihoodConv2d": "dmol"}
LATENT_KINDS = {"GaussianConv2d": "conv", "GaussianDense": "dense"}
REFERENCE_NUM_MIX = 10  # DiscretizedLogisticMixLikelihoodConv2d's nr_mix; dvae_run.py keeps it


# ----------------------------------------------------------------------------------------------
# Reading the reference checkpoint


def load_reference(path: str) -> tuple[dict[str, np.ndarray], Optional[dict], Optional[str]]:
  """`(state_dict as float32 numpy, constructor kwargs, class name)` of an hvae-oodd checkpoint.

  `path` is the model directory (with model_state_dict.pt, and usually model_kwargs.pt and
  model_class_name.pt) or the state-dict file. kwargs and the class name are None when only
  the state dict is there.
  """
  try:
    # Optional: only reading the reference's own files needs torch.
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise PortError("porting a PyTorch checkpoint needs torch, an optional extra: "
                    "pip install torch (the CPU build is enough).") from None
  path = os.path.expanduser(path)
  state_file = os.path.join(path, STATE_DICT_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(state_file):
    raise PortError(f"no hvae-oodd model at {path}: expected the directory dvae_run.py saves "
                    f"(with {STATE_DICT_FILE}) or that file itself.")
  folder = os.path.dirname(state_file)

  def read(file):
    try:  # weights_only: tensors, dicts and torch.Size only; nothing is unpickled otherwise
      return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for a bad file
      raise PortError(f"cannot read {file}: {type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}") from None

  def optional(name):
    file = os.path.join(folder, name)
    return read(file) if os.path.isfile(file) else None

  state = read(state_file)
  if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
    raise PortError(f"{state_file} is not a state dict of tensors.")
  state = {k: v.detach().cpu().numpy() for k, v in state.items()}
  kwargs = optional(KWARGS_FILE)
  if isinstance(kwargs, dict) and "kwargs" in kwargs:  # BaseModule.save nests them
    kwargs = {**kwargs.pop("kwargs"), **kwargs}
  return state, kwargs, optional(CLASS_NAME_FILE)


def reference_config(config: ml_collections.ConfigDict, kwargs: Optional[dict],
                     image_shape: tuple[int, int, int],
                     class_name: Optional[str] = None) -> ml_collections.ConfigDict:
  """`config` with the reference's activations, colour scaling and BIVA wiring, after
  checking it describes the same model.

  kwargs None (a bare state dict): dvae_run.py's default activation, ReLU, and no check; the
  shapes are still checked when the weights are mapped. class_name None: the config's model.
  """
  c = ml_collections.ConfigDict(config.to_dict())
  if class_name is not None and MODELS.get(class_name) != c.model.name:
    raise PortError(f"the reference is hvae-oodd's {class_name!r}, config.model.name is "
                    f"{c.model.name!r}: pass a config of that model (hvae-oodd's "
                    f"{sorted(MODELS)} port to {sorted(MODELS.values())}).")
  activation = "ReLU" if kwargs is None else kwargs.get("activation", "ReLU")
  if activation not in ACTIVATIONS:
    raise PortError(f"the reference's activation {activation!r} has no counterpart here; "
                    f"known: {sorted(ACTIVATIONS)}.")
  m = c.model
  m.activation = ACTIVATIONS[activation]
  m.latent_activation = "elu" if m.name == "biva" else m.activation
  m.likelihood_activation = "identity" if m.likelihood == "dmol" else m.activation
  m.colour_input, m.biva_variant = "unit", "hvae-oodd"
  if kwargs is None:
    return c
  problems = []
  lik = LIKELIHOODS.get(kwargs.get("likelihood_module"))
  if lik is None:
    problems.append(f"likelihood {kwargs.get('likelihood_module')!r} cannot be ported (only "
                    f"{sorted(LIKELIHOODS)})")
  elif lik != m.likelihood:
    problems.append(f"likelihood {lik!r}, config.model.likelihood {m.likelihood!r}")
  elif lik == "dmol" and m.num_mix != REFERENCE_NUM_MIX:
    problems.append(f"{REFERENCE_NUM_MIX} mixture components, config.model.num_mix {m.num_mix}")
  if tuple(kwargs.get("input_shape", ())) != (image_shape[2], *image_shape[:2]):
    problems.append(f"input shape {tuple(kwargs.get('input_shape', ()))} (C, H, W), the config's "
                    f"data set {c.data.name!r} has {image_shape} (H, W, C)")
  for key, want in (("skip_stochastic", True), ("padded_shape", None)):
    if kwargs.get(key, want) != want:
      problems.append(f"{key}={kwargs.get(key)!r} (only {want!r} is supported)")
  blocks = [[(b["out_channels"], b["kernel_size"], b.get("stride", 1)) for b in stage]
            for stage in kwargs.get("config_deterministic", [])]
  if any(b.get("block") != "ResBlockConv2d" or b.get("gated", True) or not b.get("weightnorm", True)
         for stage in kwargs.get("config_deterministic", []) for b in stage):
    problems.append("deterministic blocks other than ungated, weight-normed ResBlockConv2d")
  elif blocks != [[tuple(b) for b in stage] for stage in m.blocks]:
    problems.append(f"blocks {blocks}, config.model.blocks {m.blocks}")
  stochastic = kwargs.get("config_stochastic", [])
  latents = [(LATENT_KINDS.get(s["block"]), s["latent_features"]) for s in stochastic]
  if any(kind is None or s.get("learn_prior") or not s.get("weightnorm", True)
         for (kind, _), s in zip(latents, stochastic)):
    problems.append(f"latents {[s['block'] for s in stochastic]} (only weight-normed "
                    f"GaussianConv2d / GaussianDense with a fixed prior)")
  elif latents != [tuple(v) for v in m.latents]:
    problems.append(f"latents {latents}, config.model.latents {m.latents}")
  kernels = {s.get("kernel_size", 3) for s in stochastic if s["block"] == "GaussianConv2d"}
  if kernels - {m.latent_kernel}:
    problems.append(f"latent kernel {sorted(kernels)}, config.model.latent_kernel "
                    f"{m.latent_kernel}")
  if problems:
    raise PortError("the reference checkpoint is not the model the config describes: it has "
                    + "; ".join(problems) + ". Pass a config with the reference's architecture.")
  return c


def port_reference(state: dict[str, np.ndarray], kwargs: Optional[dict],
                   class_name: Optional[str], config: ml_collections.ConfigDict
                   ) -> tuple[ml_collections.ConfigDict, Any, dict[str, Any]]:
  """`(config, model, params)` of a reference model given as numpy arrays (no torch needed).

  `config` must describe the reference's architecture; the returned one has its activations
  and wiring (`reference_config`).
  """
  spec = data.get_spec(config.data.name)
  config = config_lib.validate(reference_config(config, kwargs, spec.image_shape, class_name))
  model = build_model(config, spec.image_shape)
  params = jax.tree_util.tree_map(np.asarray, port_params(model, spec.image_shape, state))
  return config, model, params


# ----------------------------------------------------------------------------------------------
# The converter


def convert(reference_checkpoint: str, config: ml_collections.ConfigDict, out: str) -> str:
  """Ports an hvae-oodd checkpoint into a checkpoint `out/checkpoints/0/`; returns `out`.

  `config` must describe the reference's architecture (its activations are set from the
  reference, see `reference_config`); the checkpoint stores it, so `hvae_jax.load_model(out)`
  and `evaluate.py --checkpoint=out` need nothing else. `out` must hold no checkpoint yet.
  """
  state, kwargs, class_name = load_reference(reference_checkpoint)
  config, _, params = port_reference(state, kwargs, class_name, config)
  spec = data.get_spec(config.data.name)
  train_state = training.fresh_state(params, config)
  metadata = training.checkpoint_metadata(config, spec.image_shape, spec.kind)
  metadata["ported_from"] = os.path.abspath(reference_checkpoint)
  with checkpoints.Checkpointer(os.path.join(out, checkpoints.CHECKPOINT_SUBDIR)) as ckpt:
    if ckpt.latest_step() is not None:
      raise PortError(f"{out} already holds a checkpoint; write the ported model to a new "
                      f"--out folder.")
    ckpt.save(0, train_state, metadata, force=True)
    ckpt.wait()
  return out


def main():
  """`python -m hvae_jax.port --reference_checkpoint=DIR --config=CONFIG --out=DIR`."""
  # Run as a program only: importing this module (tests, the API) defines no absl flags.
  from absl import app, flags, logging  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("reference_checkpoint", None, "hvae-oodd model directory (dvae_run.py's "
                      "save_dir, with model_state_dict.pt) or its model_state_dict.pt.",
                      required=True)
  config_flags.DEFINE_config_file("config", "configs/fmnist_hvae.py", "Config with the "
                                  "reference's architecture (data set, blocks, latents).")
  flags.DEFINE_string("out", None, "New folder for the ported checkpoint.", required=True)

  def run(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    f = flags.FLAGS
    with cli.errors_to_exit((PortError, ValueError, checkpoints.CheckpointError)):
      out = convert(f.reference_checkpoint, f.config, f.out)
    print(f"Ported {f.reference_checkpoint} into {out}; score it with "
          f"python evaluate.py --checkpoint={out}")

  app.run(run, flags_parser=cli.parse_flags_or_exit)


if __name__ == "__main__":
  main()
