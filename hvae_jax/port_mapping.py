"""Weights of an hvae-oodd model (`VAE` or `BIVA`) as our parameter tree; no torch needed.

Mapping, by structure: every weight-normed layer of our model (found by running it abstractly)
names the reference parameter it comes from (`reference_prefix`), and its kind decides the
layout change: torch convolutions are `[out, in, kh, kw]` (ours `[kh, kw, in, out]`),
transposed ones `[in, out, kh, kw]` with the kernel flipped (torch's is the gradient of a
convolution, `lax.conv_transpose` a convolution of the dilated input), dense layers
`[out, in]`, and a dense layer that reads or writes a feature map sees it flattened in
(c, h, w) order instead of our (h, w, c). Weight norm is the same split, w = g v / ||v||
(torch's weight_g, weight_v, bias are our scale, kernel, bias). The logistic-mixture layer's
outputs are reordered: hvae-oodd (PixelCNN++) stores, after the M mixture logits, per colour
channel c the blocks (means, log-scales, coefficient c) of M each; ours stores all means, then
all log-scales, then the coefficients (distributions.py). Reference entries that hold no
weight of the function (the `initialized` flags, the inverse-softplus constants, the HVAE's
top q-projection that its model never uses, the fixed N(0, I) top prior) are checked and
skipped; any other entry left over, or missing, stops the port with the key named.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import flax.linen as nn
import numpy as np

from hvae_jax import distributions as dist
from hvae_jax.layers import WNConv, WNDense
from hvae_jax.models import abstract_params
from hvae_jax.models.common import AsFeatureMap

# Reference entries that are not weights of the function (checked where it matters).
_NOT_WEIGHTS = re.compile(r"(\.initialized|\.std_activation_inverse\.(beta|threshold))$")
# Our module (name without its stage / block indices) -> the reference's, inside `stages.<i>.`.
_MODULES = {
    "hvae": {"q_blocks": "q_deterministic.layers", "p_blocks": "p_deterministic.layers",
             "q_latents": "stochastic.in_transform_q", "p_latents": "stochastic.in_transform_p",
             "q_proj": "q_projection.transform", "p_proj": "p_projection.transform"},
    "biva": {"q_bu_blocks": "q_bu_convs.layers", "q_td_blocks": "q_td_convs.layers",
             "p_blocks": "p_deterministic.layers", "td_merge": "merge",
             "q_bu_latents": "bu_stochastic.in_transform_q",
             "p_bu_latents": "bu_stochastic.in_transform_p",
             "q_td_latents": "td_stochastic.in_transform_q",
             "p_td_latents": "td_stochastic.in_transform_p",
             "bu_proj": "bu_proj.transform", "z_proj": "z_proj.transform"},
}
# BIVA's top-stage modules, which carry no stage index here.
_BIVA_TOP = {"q_top": "q_top", "q_top_latent": "stochastic.in_transform_q"}
_INDEXED = re.compile(r"([a-z_]+?)_(\d+)(?:_(\d+))?$")
_BLOCK_OPS = {"conv1": "conv1", "conv2": "conv2", "aux": "aux_op"}


class PortError(ValueError):
  """A reference checkpoint that cannot be ported; the message names the entry and why."""


def model_layers(model: nn.Module, image_shape) -> dict[tuple[str, ...], dict[str, Any]]:
  """Every weight-normed layer of `model`, by module path: its kind, the feature-map shapes a
  dense layer reads or writes, its kernel shape, and for the logistic-mixture layer the
  reference's index of each of our outputs (`out_perm`)."""
  found = {}

  def record(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, (WNConv, WNDense)):
      found[mod.path] = dict(
          kind="dense" if isinstance(mod, WNDense) else "conv",
          transposed=isinstance(mod, WNConv) and mod.transpose and mod.stride > 1,
          in_map=tuple(args[0].shape[1:]) if args[0].ndim == 4 else None,
          out_map=tuple(mod.parent.shape) if isinstance(mod.parent, AsFeatureMap) else None,
          out_perm=None)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    params = abstract_params(model, image_shape)
  for path, layer in found.items():
    node = params
    for part in path:
      node = node[part]
    layer["kernel"] = tuple(node["kernel"].shape)
  if model.likelihood == "dmol":
    found[("lik", "head")]["out_perm"] = dmol_reference_order(image_shape[-1], model.num_mix)
  return found


def dmol_reference_order(channels: int, num_mix: int) -> np.ndarray:
  """`[P]`: for each of our logistic-mixture parameters, its index in hvae-oodd's layout.

  Theirs (PixelCNN++, 3 channels only): M logits, then for channel c = 0, 1, 2 the means,
  log-scales and coupling coefficients c (coefficient 0 is (G|R), 1 (B|R), 2 (B|G), our
  coupling order) of the M components.
  """
  if channels != 3:
    raise PortError(f"hvae-oodd's logistic mixture is for 3 colour channels; the data has "
                    f"{channels}.")
  m = num_mix
  ours = [np.arange(m)]
  for part in range(3):  # means, log-scales, coefficients: blocks of 3 channels x M each
    ours += [m + c * 3 * m + part * m + np.arange(m) for c in range(3)]
  order = np.concatenate(ours)
  assert len(order) == dist.dmol_num_params(3, m)
  return order


def reference_shapes(layer: dict[str, Any]) -> tuple[tuple[int, ...], ...]:
  """Shapes of the reference's (weight_v, weight_g, bias) for one of our layers (`model_layers`)."""
  *_, c_in, c_out = layer["kernel"]
  if layer["kind"] == "dense":
    return (c_out, c_in), (c_out, 1), (c_out,)
  k_h, k_w = layer["kernel"][:2]
  if layer["transposed"]:  # ConvTranspose2d, weight norm over dim 1
    return (c_in, c_out, k_h, k_w), (1, c_out, 1, 1), (c_out,)
  return (c_out, c_in, k_h, k_w), (c_out, 1, 1, 1), (c_out,)


def reference_prefix(path: tuple[str, ...], kind: str, model_name: str = "hvae",
                     n_stages: int = 0) -> str:
  """The reference's state-dict prefix of our layer at module `path` (without .weight_v).

  `model_name` 'hvae' (hvae-oodd's VAE) or 'biva' (its BIVA, whose top stage `n_stages` - 1
  holds `q_top` and `q_top_latent`).
  """
  if path == ("lik", "head"):
    return "likelihood.parameter_net.conv"
  where = f"our layer {'/'.join(path)} has no counterpart in the reference {model_name.upper()}."
  if len(path) != 2:
    raise PortError(where)
  if model_name == "biva" and path[0] in _BIVA_TOP:
    stage, inner = n_stages - 1, _BIVA_TOP[path[0]]
  else:
    m = _INDEXED.match(path[0])
    if m is None or m.group(1) not in _MODULES[model_name]:
      raise PortError(where)
    name, stage, block = m.groups()
    inner = _MODULES[model_name][name] + ("" if block is None else f".{block}")
  if path[1] in _BLOCK_OPS:
    return f"stages.{stage}.{inner}.{_BLOCK_OPS[path[1]]}.conv"
  return f"stages.{stage}.{inner}.{'conv' if kind == 'conv' else 'linear'}"


def _chw_to_hwc(a: np.ndarray, axis: int, shape: tuple[int, int, int]) -> np.ndarray:
  """Reorders `axis` of `a`, a flattened (c, h, w) feature map, into our (h, w, c) order."""
  h, w, c = shape
  a = np.moveaxis(a, axis, 0)
  a = a.reshape(c, h, w, *a.shape[1:]).transpose(1, 2, 0, *range(3, a.ndim + 2))
  return np.moveaxis(a.reshape(h * w * c, *a.shape[3:]), 0, axis)


def convert_layer(layer: dict[str, Any], v: np.ndarray, g: np.ndarray,
                  b: np.ndarray) -> dict[str, np.ndarray]:
  """One reference layer's (weight_v, weight_g, bias) as our {kernel, scale, bias}.

  `layer` is what `model_layers` records: kind 'conv' (transposed or not) or 'dense', for a
  dense layer the feature-map shapes `(h, w, c)` it reads (`in_map`) or writes (`out_map`),
  and optionally `out_perm`, the reference's index of each of our outputs.
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
  if layer.get("out_perm") is not None:
    kernel, scale, bias = (a[..., layer["out_perm"]] for a in (kernel, scale, bias))
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
      skipped.append(key)  # constants, and the HVAE's top q-projection its model never uses
    elif key == top + "stochastic.prior_logits":
      mean, pre = np.split(value.astype(np.float64), 2)
      std = np.log1p(np.exp(np.log(2.0) * pre)) / np.log(2.0)  # softplus, beta = ln 2
      if np.abs(mean).max() > 1e-6 or np.abs(std - 1.0).max() > 1e-6:
        raise PortError(f"{key}: the reference's top prior is not N(0, I) (a learned prior); "
                        f"this model's top prior is fixed.")
      skipped.append(key)
  return skipped


def port_params(model: nn.Module, image_shape: tuple[int, int, int],
                state: dict[str, np.ndarray], model_name: Optional[str] = None) -> dict[str, Any]:
  """Our parameter tree for `model` from a reference state dict (numpy arrays).

  `model_name` 'hvae' or 'biva' (default: from the model's class).

  Raises:
    PortError: naming the first reference key that is missing, of the wrong shape, or left
      over (not a weight of our model and not one of the known non-weights).
  """
  model_name = model_name or type(model).__name__.lower()
  what = f"this architecture's {model_name.upper()}"
  n_stages = len(model.blocks)
  params: dict[str, Any] = {}
  used = set(_check_skipped(state, n_stages))
  for path, layer in model_layers(model, image_shape).items():
    prefix = reference_prefix(path, layer["kind"], model_name, n_stages)
    names = [f"{prefix}.weight_v", f"{prefix}.weight_g", f"{prefix}.bias"]
    for name, shape in zip(names, reference_shapes(layer)):
      if name not in state:
        raise PortError(f"reference key {name} (for our {'/'.join(path)}) is missing from the "
                        f"checkpoint: it is not {what}.")
      if tuple(state[name].shape) != shape:
        raise PortError(f"reference key {name} has shape {tuple(state[name].shape)}, our "
                        f"{'/'.join(path)} needs {shape}: it is not {what}.")
    node = params
    for part in path:
      node = node.setdefault(part, {})
    node.update(convert_layer(layer, *(state[n] for n in names)))
    used.update(names)
  left = [k for k in state if k not in used]
  if left:
    raise PortError(f"reference key {left[0]} maps to nothing in our model ({len(left)} such "
                    f"keys): it is not {what}.")
  return params
