"""The authors' PyTorch HVAE (hvae-oodd) as an hvae-jax model: weight porting and a converter.

  python -m hvae_jax.port --reference_checkpoint=models/FashionMNISTBinarized-<time>/ \
      --config=configs/fmnist_hvae.py --out=workdirs/fmnist_ported
  python evaluate.py --checkpoint=workdirs/fmnist_ported --ood=mnist

A trained hvae-oodd model is the directory `scripts/dvae_run.py` saves into with
`BaseModule.save`: `model_class_name.pt` ('VAE' for the paper's HVAE), `model_kwargs.pt` (the
constructor's arguments: config_deterministic, config_stochastic, likelihood, activation, ...)
and `model_state_dict.pt` (the `state_dict()`); `--reference_checkpoint` is that directory or
the state-dict file itself. The output is a training-style checkpoint (`OUT/checkpoints/0/`
plus `OUT/config.json`) that `hvae_jax.load_model` and `evaluate.py --checkpoint` load.

Mapping, by structure: every weight-normed layer of our model (found by running it abstractly)
names the reference parameter it comes from (`reference_prefix`), and its kind decides the
layout change: torch convolutions are `[out, in, kh, kw]` (ours `[kh, kw, in, out]`),
transposed ones `[in, out, kh, kw]` with the kernel flipped (torch's is the gradient of a
convolution, `lax.conv_transpose` a convolution of the dilated input), dense layers
`[out, in]`, and a dense layer that reads or writes a feature map sees it flattened in
(c, h, w) order instead of our (h, w, c). Weight norm is the same split, w = g v / ||v||
(torch's weight_g, weight_v, bias are our scale, kernel, bias). Reference entries that hold no
weight of the function (the `initialized` flags, the inverse-softplus constants, the top
stage's q-projection that its model never uses, the fixed N(0, I) top prior) are checked and
skipped; any other entry left over, or missing, stops the port with the key named.

The reference applies its one `activation` (ReLU by default) in every block, before the
latent layers' and before the likelihood's parameter layer: the converter sets
model.activation, model.latent_activation and model.likelihood_activation to it.

torch is imported only here, lazily: an optional extra (`pip install torch`, the CPU build is
enough), not a dependency of the package.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from hvae_jax import checkpoints, config as config_lib, data, train_lib
from hvae_jax.layers import WNConv, WNDense
from hvae_jax.models import build_model
from hvae_jax.models.common import AsFeatureMap

STATE_DICT_FILE = "model_state_dict.pt"
KWARGS_FILE = "model_kwargs.pt"
CLASS_NAME_FILE = "model_class_name.pt"
# torch.nn activation class names of the reference -> ours (LeakyReLU: slope 0.01 in both).
ACTIVATIONS = {"ReLU": "relu", "ELU": "elu", "LeakyReLU": "leaky_relu", "Swish": "swish"}
LIKELIHOODS = {"BernoulliLikelihoodConv2d": "bernoulli"}
LATENT_KINDS = {"GaussianConv2d": "conv", "GaussianDense": "dense"}
# Reference entries that are not weights of the function (checked where it matters).
_NOT_WEIGHTS = re.compile(r"(\.initialized|\.std_activation_inverse\.(beta|threshold))$")


class PortError(ValueError):
  """A reference checkpoint that cannot be ported; the message names the entry and why."""


# ----------------------------------------------------------------------------------------------
# Reading the reference checkpoint


def load_reference(path: str) -> tuple[dict[str, np.ndarray], Optional[dict]]:
  """`(state_dict as float32 numpy, constructor kwargs or None)` of an hvae-oodd checkpoint.

  `path` is the model directory (with model_state_dict.pt, and usually model_kwargs.pt and
  model_class_name.pt) or the state-dict file. kwargs is None when only the state dict is
  there; a class other than 'VAE' (the HVAE) is refused.
  """
  try:
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

  class_file = os.path.join(folder, CLASS_NAME_FILE)
  if os.path.isfile(class_file) and read(class_file) != "VAE":
    raise PortError(f"{class_file} says {read(class_file)!r}; only the paper's HVAE "
                    f"(hvae-oodd's --model VAE) can be ported.")
  state = read(state_file)
  if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
    raise PortError(f"{state_file} is not a state dict of tensors.")
  state = {k: v.detach().cpu().numpy() for k, v in state.items()}
  kwargs_file = os.path.join(folder, KWARGS_FILE)
  kwargs = read(kwargs_file) if os.path.isfile(kwargs_file) else None
  if isinstance(kwargs, dict) and "kwargs" in kwargs:  # VAE(**kwargs) stores them nested
    kwargs = {**kwargs.pop("kwargs"), **kwargs}
  return state, kwargs


def reference_config(config: ml_collections.ConfigDict, kwargs: Optional[dict],
                     image_shape: tuple[int, int, int]) -> ml_collections.ConfigDict:
  """`config` with the reference's activations, after checking it describes the same model.

  kwargs None (a bare state dict): the activations of dvae_run.py's default, ReLU, and no
  check; the shapes are still checked when the weights are mapped.
  """
  c = ml_collections.ConfigDict(config.to_dict())
  activation = "ReLU" if kwargs is None else kwargs.get("activation", "ReLU")
  if activation not in ACTIVATIONS:
    raise PortError(f"the reference's activation {activation!r} has no counterpart here; "
                    f"known: {sorted(ACTIVATIONS)}.")
  c.model.activation = c.model.latent_activation = c.model.likelihood_activation = (
      ACTIVATIONS[activation])
  if kwargs is None:
    return c
  problems = []
  lik = LIKELIHOODS.get(kwargs.get("likelihood_module"))
  if lik is None:
    problems.append(f"likelihood {kwargs.get('likelihood_module')!r} cannot be ported (only "
                    f"{sorted(LIKELIHOODS)})")
  elif lik != c.model.likelihood:
    problems.append(f"likelihood {lik!r}, config.model.likelihood {c.model.likelihood!r}")
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
  elif blocks != [[tuple(b) for b in stage] for stage in c.model.blocks]:
    problems.append(f"blocks {blocks}, config.model.blocks {c.model.blocks}")
  stochastic = kwargs.get("config_stochastic", [])
  latents = [(LATENT_KINDS.get(s["block"]), s["latent_features"]) for s in stochastic]
  if any(kind is None or s.get("learn_prior") or not s.get("weightnorm", True)
         for (kind, _), s in zip(latents, stochastic)):
    problems.append(f"latents {[s['block'] for s in stochastic]} (only weight-normed "
                    f"GaussianConv2d / GaussianDense with a fixed prior)")
  elif latents != [tuple(v) for v in c.model.latents]:
    problems.append(f"latents {latents}, config.model.latents {c.model.latents}")
  kernels = {s.get("kernel_size", 3) for s in stochastic if s["block"] == "GaussianConv2d"}
  if kernels - {c.model.latent_kernel}:
    problems.append(f"latent kernel {sorted(kernels)}, config.model.latent_kernel "
                    f"{c.model.latent_kernel}")
  if problems:
    raise PortError("the reference checkpoint is not the model the config describes: it has "
                    + "; ".join(problems) + ". Pass a config with the reference's architecture.")
  return c


# ----------------------------------------------------------------------------------------------
# The mapping


def model_layers(model: nn.Module, image_shape) -> dict[tuple[str, ...], dict[str, Any]]:
  """Every weight-normed layer of `model`, by module path: its kind, the feature-map shapes a
  dense layer reads or writes, and its kernel shape."""
  found = {}

  def record(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, (WNConv, WNDense)):
      found[mod.path] = dict(
          kind="dense" if isinstance(mod, WNDense) else "conv",
          transposed=isinstance(mod, WNConv) and mod.transpose and mod.stride > 1,
          in_map=tuple(args[0].shape[1:]) if args[0].ndim == 4 else None,
          out_map=tuple(mod.parent.shape) if isinstance(mod.parent, AsFeatureMap) else None)
    return next_fun(*args, **kwargs)

  x = np.zeros((2, *image_shape), np.uint8 if model.likelihood == "dmol" else np.float32)
  with nn.intercept_methods(record):
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jax.random.key(0)))["params"]
  for path, layer in found.items():
    node = params
    for part in path:
      node = node[part]
    layer["kernel"] = tuple(node["kernel"].shape)
  return found


def reference_shapes(layer: dict[str, Any]) -> tuple[tuple[int, ...], ...]:
  """Shapes of the reference's (weight_v, weight_g, bias) for one of our layers (`model_layers`)."""
  *_, c_in, c_out = layer["kernel"]
  if layer["kind"] == "dense":
    return (c_out, c_in), (c_out, 1), (c_out,)
  k_h, k_w = layer["kernel"][:2]
  if layer["transposed"]:  # ConvTranspose2d, weight norm over dim 1
    return (c_in, c_out, k_h, k_w), (1, c_out, 1, 1), (c_out,)
  return (c_out, c_in, k_h, k_w), (c_out, 1, 1, 1), (c_out,)


_STAGE_MODULE = re.compile(r"(q|p)_(blocks|latents|proj)_(\d+)(?:_(\d+))?$")


def reference_prefix(path: tuple[str, ...], kind: str) -> str:
  """The reference's state-dict prefix of our layer at module `path` (without .weight_v)."""
  if path == ("lik", "head"):
    return "likelihood.parameter_net.conv"
  m = _STAGE_MODULE.match(path[0])
  if m is None or len(path) != 2:
    raise PortError(f"our layer {'/'.join(path)} has no counterpart in the reference HVAE.")
  side, what, stage, block = m.groups()
  if what == "blocks":
    op = {"conv1": "conv1", "conv2": "conv2", "aux": "aux_op"}[path[1]]
    det = "q_deterministic" if side == "q" else "p_deterministic"
    return f"stages.{stage}.{det}.layers.{block}.{op}.conv"
  inner = "conv" if kind == "conv" else "linear"
  if what == "latents":
    return f"stages.{stage}.stochastic.in_transform_{side}.{inner}"
  return f"stages.{stage}.{side}_projection.transform.linear"


def _chw_to_hwc(a: np.ndarray, axis: int, shape: tuple[int, int, int]) -> np.ndarray:
  """Reorders `axis` of `a`, a flattened (c, h, w) feature map, into our (h, w, c) order."""
  h, w, c = shape
  a = np.moveaxis(a, axis, 0)
  a = a.reshape(c, h, w, *a.shape[1:]).transpose(1, 2, 0, *range(3, a.ndim + 2))
  return np.moveaxis(a.reshape(h * w * c, *a.shape[3:]), 0, axis)


def convert_layer(layer: dict[str, Any], v: np.ndarray, g: np.ndarray,
                  b: np.ndarray) -> dict[str, np.ndarray]:
  """One reference layer's (weight_v, weight_g, bias) as our {kernel, scale, bias}.

  `layer` is what `model_layers` records: kind 'conv' (transposed or not) or 'dense', and for a
  dense layer the feature-map shapes `(h, w, c)` it reads (`in_map`) or writes (`out_map`).
  """
  if layer["kind"] == "conv":
    # ConvTranspose2d: [in, out, kh, kw], flipped; Conv2d: [out, in, kh, kw].
    kernel = (v[:, :, ::-1, ::-1].transpose(2, 3, 0, 1) if layer["transposed"]
              else v.transpose(2, 3, 1, 0))
  else:
    kernel = v.T  # [out, in] -> [in, out]
    if layer["in_map"] is not None:
      kernel = _chw_to_hwc(kernel, 0, layer["in_map"])
  scale, bias = g.reshape(-1), b
  if layer["out_map"] is not None:
    kernel, scale, bias = (_chw_to_hwc(a, a.ndim - 1, layer["out_map"])
                           for a in (kernel, scale, bias))
  return {"kernel": np.ascontiguousarray(kernel, np.float32),
          "scale": np.ascontiguousarray(scale, np.float32),
          "bias": np.ascontiguousarray(bias, np.float32)}


def _check_skipped(state: dict[str, np.ndarray], n_stages: int) -> list[str]:
  """The entries the port does not map, after checking they carry nothing it would drop."""
  top = f"stages.{n_stages - 1}."
  skipped = []
  for key, value in state.items():
    if key.endswith(".initialized"):
      if not bool(np.all(value)):
        raise PortError(f"reference layer {key[:-len('.initialized')]} was never initialised "
                        f"(its data-dependent init runs on the first forward pass): the "
                        f"checkpoint holds untrained weights.")
      skipped.append(key)
    elif _NOT_WEIGHTS.search(key) or key.startswith(top + "q_projection."):
      skipped.append(key)  # constants, and the top q-projection the reference never uses
    elif key == top + "stochastic.prior_logits":
      mean, pre = np.split(value.astype(np.float64), 2)
      std = np.log1p(np.exp(np.log(2.0) * pre)) / np.log(2.0)  # softplus, beta = ln 2
      if np.abs(mean).max() > 1e-6 or np.abs(std - 1.0).max() > 1e-6:
        raise PortError(f"{key}: the reference's top prior is not N(0, I) (a learned prior); "
                        f"this model's top prior is fixed.")
      skipped.append(key)
  return skipped


def port_params(model: nn.Module, image_shape: tuple[int, int, int],
                state: dict[str, np.ndarray]) -> dict[str, Any]:
  """Our parameter tree for `model` from a reference HVAE state dict (numpy arrays).

  Raises:
    PortError: naming the first reference key that is missing, of the wrong shape, or left
      over (not a weight of our model and not one of the known non-weights).
  """
  params: dict[str, Any] = {}
  used = set(_check_skipped(state, len(model.blocks)))
  for path, layer in model_layers(model, image_shape).items():
    prefix = reference_prefix(path, layer["kind"])
    names = [f"{prefix}.weight_v", f"{prefix}.weight_g", f"{prefix}.bias"]
    for name, shape in zip(names, reference_shapes(layer)):
      if name not in state:
        raise PortError(f"reference key {name} (for our {'/'.join(path)}) is missing from the "
                        f"checkpoint: it is not this architecture's HVAE.")
      if tuple(state[name].shape) != shape:
        raise PortError(f"reference key {name} has shape {tuple(state[name].shape)}, our "
                        f"{'/'.join(path)} needs {shape}: it is not this architecture's HVAE.")
    node = params
    for part in path:
      node = node.setdefault(part, {})
    node.update(convert_layer(layer, *(state[n] for n in names)))
    used.update(names)
  left = [k for k in state if k not in used]
  if left:
    raise PortError(f"reference key {left[0]} maps to nothing in our model ({len(left)} such "
                    f"keys): it is not this architecture's HVAE.")
  return params


# ----------------------------------------------------------------------------------------------
# The converter


def convert(reference_checkpoint: str, config: ml_collections.ConfigDict, out: str) -> str:
  """Ports an hvae-oodd checkpoint into a checkpoint `out/checkpoints/0/`; returns `out`.

  `config` must describe the reference's architecture (its activations are set from the
  reference, see `reference_config`); the checkpoint stores it, so `hvae_jax.load_model(out)`
  and `evaluate.py --checkpoint=out` need nothing else. `out` must hold no checkpoint yet.
  """
  spec = data.get_spec(config.data.name)
  state, kwargs = load_reference(reference_checkpoint)
  config = config_lib.validate(reference_config(config, kwargs, spec.image_shape))
  if config.model.name != "hvae" or config.model.likelihood != "bernoulli":
    raise PortError(f"config.model.name {config.model.name!r}, likelihood "
                    f"{config.model.likelihood!r}: only the HVAE with the Bernoulli likelihood "
                    f"(the paper's FashionMNIST model) can be ported.")
  model = build_model(config, spec.image_shape)
  params = jax.tree_util.tree_map(np.asarray, port_params(model, spec.image_shape, state))
  train_state = train_lib.fresh_state(params, config)
  metadata = train_lib.checkpoint_metadata(config, spec.image_shape, spec.kind)
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
    try:
      out = convert(f.reference_checkpoint, f.config, f.out)
    except (PortError, ValueError, checkpoints.CheckpointError) as e:
      raise SystemExit(f"error: {e}") from None
    print(f"Ported {f.reference_checkpoint} into {out}; score it with "
          f"python evaluate.py --checkpoint={out}")

  app.run(run, flags_parser=config_lib.parse_flags_or_exit)


if __name__ == "__main__":
  main()
