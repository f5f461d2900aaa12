"""Ways the paper model's largest convolution could run faster on CPU, timed against it.

  python bench/conv_alternatives.py --repeats 5

The paper's FashionMNIST HVAE spends most of its train step in 5x5 64->64 convolutions at
28x28 (bench/RESULTS.md, train-step profile). One process times, alternating, so the ratios
hold on a busy machine:
  - the XLA convolution (forward, and forward + input and weight gradients) in float32 and in
    bfloat16 (mixed precision, where the CPU has AVX512-BF16 / AMX);
  - the core of a Winograd F(2x2, 5x5) convolution of the same shapes: its 36 batched
    [128*14*14, 64] x [64, 64] products (forward) and [64, 128*14*14] x [128*14*14, 64]
    products (weight gradient), 2.8x fewer multiplications than the direct convolution and
    before any input or output transform. Winograd can only win if these beat the direct
    convolution by a clear margin;
  - the convolution as explicit patches and one matrix product (im2col:
    `lax.conv_general_dilated_patches` + `dot_general`, [128*28*28, 64*25] x [64*25, 64]),
    forward and forward + gradients, checked equal to the convolution first.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hvae_jax  # pylint: disable=wrong-import-position,unused-import  (the CPU XLA defaults)
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from jax import lax  # pylint: disable=wrong-import-position

from bench.eval_throughput import timed  # pylint: disable=wrong-import-position
from hvae_jax.layers import conv2d_same  # pylint: disable=wrong-import-position

BATCH, SIZE, CHANNELS, KERNEL = 128, 28, 64, 5
TILES = BATCH * (SIZE // 2) ** 2  # F(2x2, 5x5): 2x2 output tiles
POINTS = (2 + KERNEL - 1) ** 2  # 6x6 transform points per tile


def conv_as_patches(x: jax.Array, w: jax.Array) -> jax.Array:
  """'SAME' stride-1 convolution of x `[batch, height, width, in]` with w `[kh, kw, in, out]`
  as im2col patches `[batch, height, width, in * kh * kw]` (in-major) times the kernel."""
  k_h, k_w, c_in, c_out = w.shape
  patches = lax.conv_general_dilated_patches(x, (k_h, k_w), (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.dot(patches, w.transpose(2, 0, 1, 3).reshape(c_in * k_h * k_w, c_out))


def milliseconds(fn, *args, repeats: int) -> float:
  """Mean milliseconds per call after a compiling, warming call."""
  return timed(fn, *args, reps=repeats)[1] * 1e3


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=2, help="alternations of every measurement")
  a = ap.parse_args()
  key = jax.random.key(0)
  loss = lambda x, w: jnp.sum(jnp.square(conv2d_same(x, w).astype(jnp.float32)))
  conv_fwd = jax.jit(conv2d_same)
  conv_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  patches_loss = lambda x, w: jnp.sum(jnp.square(conv_as_patches(x, w)))
  patches_fwd = jax.jit(conv_as_patches)
  patches_grads = jax.jit(jax.value_and_grad(patches_loss, argnums=(0, 1)))
  x32 = jax.random.normal(key, (BATCH, SIZE, SIZE, CHANNELS))
  w32 = 0.05 * jax.random.normal(key, (KERNEL, KERNEL, CHANNELS, CHANNELS))
  np.testing.assert_allclose(patches_fwd(x32, w32), conv_fwd(x32, w32), rtol=1e-4, atol=1e-4)
  v = jax.random.normal(key, (POINTS, TILES, CHANNELS))
  u = jax.random.normal(key, (POINTS, CHANNELS, CHANNELS))
  products = jax.jit(lambda v, u: jnp.einsum("ptc,pcd->ptd", v, u))
  weight_products = jax.jit(lambda v, m: jnp.einsum("ptc,ptd->pcd", v, m))
  print(f"jax {jax.__version__}, devices {jax.devices()}, XLA_FLAGS={os.environ.get('XLA_FLAGS')}")
  for r in range(a.rounds):
    for dtype in (jnp.float32, jnp.bfloat16):
      x = jax.random.normal(key, (BATCH, SIZE, SIZE, CHANNELS), dtype)
      w = (0.05 * jax.random.normal(key, (KERNEL, KERNEL, CHANNELS, CHANNELS))).astype(dtype)
      print(f"round {r}: conv {dtype.__name__}: forward "
            f"{milliseconds(conv_fwd, x, w, repeats=a.repeats):.0f} ms, forward + gradients "
            f"{milliseconds(conv_grads, x, w, repeats=a.repeats):.0f} ms", flush=True)
    print(f"round {r}: patches + matmul float32: forward "
          f"{milliseconds(patches_fwd, x32, w32, repeats=a.repeats):.0f} ms, forward + gradients "
          f"{milliseconds(patches_grads, x32, w32, repeats=a.repeats):.0f} ms", flush=True)
    print(f"round {r}: Winograd F(2,5) products float32: forward "
          f"{milliseconds(products, v, u, repeats=a.repeats):.0f} ms, weight gradient "
          f"{milliseconds(weight_products, v, v, repeats=a.repeats):.0f} ms", flush=True)


if __name__ == "__main__":
  main()
