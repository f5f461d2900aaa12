"""XLA:CPU's batch<->channel transposes for weight gradients, with and without fused ops.

  taskset -c 0 python bench/transpose_fusion.py --steps 14

Every weight-gradient convolution reads its input through a [batch, h, w, c] -> [c, h, w, batch]
transpose (bench/RESULTS.md, train-step profile). Part 1 times that transpose of a
[128, 28, 28, 64] activation alone and with an elementwise op fused into it: XLA:CPU's fused
transpose is several times slower once the fusion holds a broadcast (a constant, a bias).
Part 2 is the lead that follows from it: ReLU written without a constant, `max(x, x - x)` with
nn.relu's gradient, which keeps the activation out of the transpose; it compiles the paper
FashionMNIST HVAE's train step with nn.relu and with that ReLU in one process and alternates
their steps, so the machine's drift hits both alike (paired per-round ratio).
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from bench.train_step import load_config, setup  # pylint: disable=wrong-import-position
from hvae_jax import layers, training  # pylint: disable=wrong-import-position

PERM = (3, 1, 2, 0)  # [batch, h, w, c] -> [c, h, w, batch], as XLA:CPU lays out the operand


@jax.custom_jvp
def constant_free_relu(x: jax.Array) -> jax.Array:
  """max(x, 0) without a constant (`x - x` is 0 for finite x); nn.relu's gradient."""
  return jnp.maximum(x, x - x)


constant_free_relu.defjvp(lambda p, t: (constant_free_relu(p[0]), jnp.where(p[0] > 0, t[0], 0)))


def min_and_median_ms(fn, *args, repeats: int = 15) -> tuple[float, float]:
  """(min, median) milliseconds per call after a compiling call."""
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append((time.perf_counter() - t0) * 1e3)
  return min(ts), statistics.median(ts)


def transposes() -> None:
  x = jax.random.normal(jax.random.key(0), (128, 28, 28, 64))
  y, bias, zeros = x + 1, jnp.zeros(64), jnp.zeros_like(x)
  t = lambda v: jnp.transpose(v, PERM)
  cases = {"transpose alone": (lambda x: t(x), x),
           "abs(x) (no broadcast)": (lambda x: t(jnp.abs(x)), x),
           "x + y (two inputs)": (lambda x, y: t(x + y), x, y),
           "max(x, zeros) (zeros an input)": (lambda x, z: t(jnp.maximum(x, z)), x, zeros),
           "max(x, 0) (nn.relu)": (lambda x: t(jnp.maximum(x, 0.0)), x),
           "x * 2": (lambda x: t(x * 2.0), x),
           "x + bias[c]": (lambda x, b: t(x + b), x, bias),
           "max(x, x - x) (constant-free relu)": (lambda x: t(constant_free_relu(x)), x)}
  print("part 1: [128, 28, 28, 64] -> [64, 28, 28, 128], ms per call (min / median)")
  for name, (fn, *args) in cases.items():
    lo, med = min_and_median_ms(jax.jit(fn), *args)
    print(f"  {name:36s} {lo:6.1f} / {med:6.1f}")


def train_steps(steps: int) -> None:
  variants = {"nn.relu": nn.relu, "constant-free relu": constant_free_relu}
  config = load_config(os.path.join(ROOT, "configs", "fmnist_hvae.py"), [])
  compiled = {}
  for name, fn in variants.items():
    layers.ACTIVATIONS["relu"] = fn  # the model looks its activation up when traced
    step, state, xb, key = setup(config, 128)
    compiled[name] = [training.compile_train_step(step, state, xb, key), state, xb, key]
  layers.ACTIVATIONS["relu"] = nn.relu
  times = {name: [] for name in variants}
  for r in range(steps + 1):
    for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
      fn, state, xb, key = compiled[name]
      t0 = time.perf_counter()
      state, metrics = fn(state, xb, key)
      jax.block_until_ready(metrics)
      if r:  # the first round warms up
        times[name].append(time.perf_counter() - t0)
      compiled[name][1] = state
  print(f"part 2: paper FashionMNIST HVAE train step, batch 128, {steps} alternating rounds")
  for name, ts in times.items():
    print(f"  {name:20s} min {min(ts):.3f} s  median {statistics.median(ts):.3f} s  "
          f"({128 / statistics.median(ts):.1f} examples/s)")
  ratio = statistics.median(a / b for a, b in zip(*times.values()))
  print(f"  paired median step-time ratio nn.relu / constant-free relu: {ratio:.3f}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=14, help="alternating train-step rounds")
  a = ap.parse_args()
  print(f"jax {jax.__version__}, devices {jax.devices()}, cores {sorted(os.sched_getaffinity(0))}")
  transposes()
  train_steps(a.steps)


if __name__ == "__main__":
  main()
