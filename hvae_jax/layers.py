"""Weight-normalised layers and the residual block shared by the HVAE and BIVA.

All tensors are NHWC: `[batch, height, width, channels]`.

Weight normalisation (Salimans & Kingma 2016): w = g * v / ||v||, with the norm taken over
every axis but the output-channel axis, and data-dependent initialisation of g and b.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "elu": nn.elu,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.01),
    "swish": nn.swish,
    "gelu": nn.gelu,
    # hvae-oodd's logistic-mixture likelihood applies no activation before its parameter layer.
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


# Standard deviation of a standard normal truncated to [-2, 2], as flax's he_normal divides by.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def kernel_scale(shape: tuple[int, ...]) -> float:
  """He-normal standard deviation of a kernel with the output features on its last axis."""
  return math.sqrt(2.0 / math.prod(shape[:-1])) / _TRUNCATED_NORMAL_STD


def kernel_init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """He-normal kernel (flax's `he_normal`): `kernel_scale(shape)` times a truncated normal."""
  return kernel_scale(shape) * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def init_params(model: nn.Module, key: Array, x: Array, sample_key: Array) -> Any:
  """Parameters distributed as `model.init(key, x, sample_key)["params"]`, in two programs.

  For a model built from these layers. XLA:CPU compiles the one-program init several times
  slower than a forward pass (bench/RESULTS.md, BIVA init): the kernels drawn inside the
  program cost more compile time than the rest. Here one flat draw gives every kernel
  (`draw_kernels`) and the data-dependent pass (`data_dependent_init`) is compiled with the
  kernels as its inputs. Same seed and batch, same parameters.
  """
  return jax.jit(functools.partial(data_dependent_init, model))(
      draw_kernels(model, key, x, sample_key), x, sample_key)


def draw_kernels(model: nn.Module, key: Array, x: Array, sample_key: Array) -> Any:
  """Every weight-norm direction `kernel` of `model` (a params tree of host arrays), drawn as
  `kernel_init` draws them: one truncated-normal draw, split and scaled on the host."""
  shapes = flax.traverse_util.flatten_dict(
      jax.eval_shape(model.init, key, x, sample_key)["params"])
  kernel_shapes = {path: s.shape for path, s in shapes.items() if path[-1] == "kernel"}
  sizes = [math.prod(shape) for shape in kernel_shapes.values()]
  flat = np.asarray(jax.jit(lambda k: jax.random.truncated_normal(
      k, -2.0, 2.0, (sum(sizes),)))(key))
  return flax.traverse_util.unflatten_dict({
      path: kernel_scale(shape) * part.reshape(shape) for (path, shape), part
      in zip(kernel_shapes.items(), np.split(flat, np.cumsum(sizes)[:-1]))})


def data_dependent_init(model: nn.Module, kernels: Any, x: Array, sample_key: Array) -> Any:
  """The rest of `model.init` given its `kernels`: one forward pass on `x` `[batch, H, W, C]`
  creates every weight-norm scale g and bias b from the batch (`_weight_norm`)."""
  # g's and b's initialisers ignore their key; flax still wants one.
  return model.apply({"params": kernels}, x, sample_key, rngs={"params": sample_key},
                     mutable="params")[1]["params"]


def _weight_norm(module: nn.Module, shape: tuple[int, ...], x: Array,
                 apply: Callable[[Array, Array], Array], dtype) -> Array:
  """`apply(x, g * v / ||v||) + b` with weight normalisation and data-dependent init.

  `v` has the output features on its last axis. As hvae-oodd (and Salimans & Kingma), the
  first call (`init`) sets g and b from the batch it sees, so every output feature starts
  with zero mean and unit variance: deep residual stacks then start at a sane scale. Init
  needs the output of the unscaled direction first, so it scales that output; afterwards g
  scales the kernel, as the reference does: no pass over the activations for g, and its
  gradient comes from the small kernel gradient instead of a reduction over the activations
  (bench/RESULTS.md, train-step profile). `apply` is linear in the kernel: the same function.
  """
  v = module.param("kernel", kernel_init, shape, jnp.float32)
  direction = v / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(v), axis=tuple(range(len(shape) - 1))),
                                       1e-12))
  if not module.has_variable("params", "scale"):  # init, or `init_params`' second program
    y = apply(x.astype(dtype), direction.astype(dtype)).astype(jnp.float32)
    axes = tuple(range(y.ndim - 1))
    inv_std = jax.lax.rsqrt(jnp.var(y, axes) + 1e-8)
    g = module.param("scale", lambda _: inv_std)
    b = module.param("bias", lambda _: -jnp.mean(y, axes) * inv_std)
    return (y * g + b).astype(dtype)
  g = module.param("scale", nn.initializers.ones, (shape[-1],), jnp.float32)
  b = module.param("bias", nn.initializers.zeros, (shape[-1],), jnp.float32)
  y = apply(x.astype(dtype), (direction * g).astype(dtype)).astype(jnp.float32)
  return (y + b).astype(dtype)


_DN = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def same_padding(size: int, k: int, s: int) -> tuple[int, int]:
  """XLA/TensorFlow 'SAME' padding of one spatial axis: output size ceil(size / s)."""
  total = max((-(-size // s) - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def conv2d(x: Array, w: Array, stride: int, padding: Padding) -> Array:
  """NHWC/HWIO convolution with explicit `((top, bottom), (left, right))` padding."""
  return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_DN)


def conv2d_same(x: Array, w: Array, stride: int = 1) -> Array:
  """'SAME'-padded `conv2d`."""
  k_h, k_w = w.shape[:2]
  pad = (same_padding(x.shape[1], k_h, stride), same_padding(x.shape[2], k_w, stride))
  return conv2d(x, w, stride, pad)


class WNDense(nn.Module):
  """Weight-normalised dense layer acting on the flattened trailing axes.

  Input `[batch, ...]`, output `[batch, features]`.
  """
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.reshape(x.shape[0], -1)
    return _weight_norm(self, (x.shape[-1], self.features), x, jnp.matmul, self.dtype)


class WNConv(nn.Module):
  """Weight-normalised 'same'-padded convolution.

  `stride > 1` downsamples by `stride`; with `transpose=True` it upsamples by `stride`
  instead (output size = input size * stride), the generative mirror of a strided conv.
  `upsample` picks how a transposed conv is computed; both give the same function of the
  same `[k, k, in, out]` kernel:
    - "transpose": `lax.conv_transpose`.
    - "subpixel": the equivalent stride-1 conv producing stride**2 phases, then
      depth-to-space. XLA's CPU backend runs forward convs (and their gradients) much faster
      than transposed ones, see bench/RESULTS.md.
  """
  features: int
  kernel_size: int
  stride: int = 1
  transpose: bool = False
  upsample: str = "transpose"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, s = self.kernel_size, self.stride
    if not self.transpose or s == 1:
      op = lambda x, w: conv2d_same(x, w, s)
    elif self.upsample == "transpose":
      op = lambda x, w: jax.lax.conv_transpose(x, w, (s, s), "SAME", dimension_numbers=_DN)
    elif self.upsample == "subpixel":
      op = lambda x, w: _subpixel_conv_transpose(x, w, s)
    else:
      raise ValueError(f"Unknown upsample mode {self.upsample!r}; use 'transpose' or 'subpixel'.")
    return _weight_norm(self, (k, k, x.shape[-1], self.features), x, op, self.dtype)


def _transpose_pads(k: int, s: int) -> tuple[int, int]:
  """Low/high padding of the dilated input that `lax.conv_transpose(..., 'SAME')` uses."""
  pad_len = k + s - 2  # makes the output exactly s times the input size
  lo = k - 1 if s > k - 1 else (pad_len + 1) // 2
  return lo, pad_len - lo


def _subpixel_conv_transpose(x: Array, w: Array, s: int) -> Array:
  """`lax.conv_transpose(x, w, (s, s), 'SAME')` as one stride-1 conv + depth-to-space.

  Output pixel `o = s*q + r` of a transposed conv only sees kernel taps with the same
  phase; gathering, for each phase `r`, those taps into a small kernel turns the transposed
  conv into `s*s` ordinary convs on the undilated input, which we run as one conv with
  `s*s*out` channels. Exact same function and parameters as the transposed conv.
  """
  k = w.shape[0]
  lo, _ = _transpose_pads(k, s)
  # For phase r and small-kernel tap j, the dilated-input offset is (r + tap - lo); taps
  # that land on inserted zeros are dropped. Build per-phase index lists of (kernel tap,
  # input offset) and pad the small kernels to a common size.
  phases = []
  for r in range(s):
    taps = [(t, (r + t - lo)) for t in range(k) if (r + t - lo) % s == 0]
    phases.append([(t, off // s) for t, off in taps])
  min_off = min(o for p in phases for _, o in p)
  max_off = max(o for p in phases for _, o in p)
  size = max_off - min_off + 1
  cin, cout = w.shape[2], w.shape[3]
  small = jnp.zeros((size, size, cin, s, s, cout), w.dtype)
  for ry, py in enumerate(phases):
    for rx, px in enumerate(phases):
      for ty, oy in py:
        for tx, ox in px:
          small = small.at[oy - min_off, ox - min_off, :, ry, rx, :].set(w[ty, tx])
  small = small.reshape(size, size, cin, s * s * cout)
  y = conv2d(x, small, 1, ((-min_off, max_off), (-min_off, max_off)))
  b, h, wd, _ = y.shape
  y = y.reshape(b, h, wd, s, s, cout).transpose(0, 1, 3, 2, 4, 5)
  return y.reshape(b, h * s, wd * s, cout)


def _match_residual(x: Array, out_shape: tuple[int, ...], stride: int, transposed: bool) -> Optional[Array]:
  """Residual path to `out_shape`: zero-pad or drop channels; 3x3 average pool when striding down.

  An upsampling block has no residual (as in the reference), so this returns None there.
  """
  if transposed and stride > 1:
    return None
  c_in, c_out = x.shape[-1], out_shape[-1]
  if c_out > c_in:
    x = jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, c_out - c_in),))
  elif c_out < c_in:
    x = x[..., :c_out]
  if stride > 1:
    x = nn.avg_pool(x, (3, 3), (stride, stride), padding="SAME", count_include_pad=True)
  return x


class ResBlock(nn.Module):
  """Residual conv block with an optional auxiliary (skip) input.

  y = conv2(act(conv1(act(x)) + aux_op(act(aux)))) + residual(x)

  `conv2` carries the stride (transposed in the generative path). `aux` of any spatial size
  is resampled to conv1's output with a strided or transposed conv, or a 1x1 conv when only
  the channels differ. An aux input that already has conv1's output shape goes through a 1x1
  conv when `same_shape_aux=True` (biva-pytorch) and is dropped otherwise, as hvae-oodd's
  ResBlockConv2d does (its skip connections act only where the shape changes).
  `residual=False` (first block of a stage fed directly by data or a latent) skips both the
  input activation and the residual sum, as the reference does.
  """
  features: int
  kernel_size: int
  stride: int = 1
  transposed: bool = False
  residual: bool = True
  activation: str = "relu"
  upsample: str = "transpose"
  dtype: jnp.dtype = jnp.float32
  same_shape_aux: bool = False

  @nn.compact
  def __call__(self, x: Array, aux: Optional[Array] = None) -> Array:
    act = get_activation(self.activation)
    conv = lambda f, k, s, t, name: WNConv(f, k, s, t, self.upsample, self.dtype, name=name)
    y = conv(self.features, self.kernel_size, 1, False, "conv1")(act(x) if self.residual else x)
    if aux is not None:
      ah, yh = aux.shape[1], y.shape[1]
      if ah > yh:
        a = conv(self.features, self.kernel_size, ah // yh, False, "aux")(act(aux))
      elif ah < yh:
        a = conv(self.features, self.kernel_size, yh // ah, True, "aux")(act(aux))
      elif aux.shape[-1] != self.features or self.same_shape_aux:
        a = conv(self.features, 1, 1, False, "aux")(act(aux))
      else:
        a = None
      if a is not None:
        y = y + a
    y = conv(self.features, self.kernel_size, self.stride, self.transposed, "conv2")(act(y))
    if self.residual:
      r = _match_residual(x, y.shape, self.stride, self.transposed)
      if r is not None:
        y = y + r.astype(y.dtype)
    return y


def count_params(params) -> int:
  """Total number of scalar parameters in a pytree."""
  return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))
