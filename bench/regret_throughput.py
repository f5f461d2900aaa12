"""Likelihood-regret throughput (example-steps/s) on random binarized inputs.

  python bench/regret_throughput.py --config=configs/fmnist_hvae_small.py --batch 1 8 32

Times `baselines.LikelihoodRegret` (one jitted, vmapped Adam step per Python call) at each
batch size, and, for comparison, the same vmapped step driven by `lax.fori_loop` inside one
jitted call: the design `LikelihoodRegret` replaced because XLA:CPU runs loop bodies slower.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from bench.train_step import load_config  # pylint: disable=wrong-import-position
from hvae_jax import baselines, data, preprocess, training  # pylint: disable=wrong-import-position
from hvae_jax.models import build_model  # pylint: disable=wrong-import-position


def fori_loop_regret(regret: baselines.LikelihoodRegret):
  """`fn(params, x, keys, steps)`: the refit of `regret` with the step loop in lax.fori_loop."""
  def fn(params, x, keys, steps):
    enc, opt_state, k_opt, k_eval = regret._start_batch(params, keys)  # pylint: disable=protected-access
    step = jax.vmap(regret._step_one, in_axes=(None, 0, 0, 0, 0, None))  # pylint: disable=protected-access
    enc, _ = jax.lax.fori_loop(0, steps, lambda i, c: step(params, *c, x, k_opt, i),
                               (enc, opt_state))
    return jax.vmap(regret._bounds_one, in_axes=(None, 0, 0, 0))(params, enc, x, k_eval)  # pylint: disable=protected-access
  return jax.jit(fn)


def rate(fn, batch, steps):
  jax.block_until_ready(fn(steps))  # compile + warm-up
  t0 = time.time()
  jax.block_until_ready(fn(steps))
  return batch * steps / (time.time() - t0)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/fmnist_hvae_small.py")
  ap.add_argument("--batch", type=int, nargs="*", default=[1, 8, 32])
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--iw", type=int, default=1, help="S of the before/after bounds")
  ap.add_argument("--no_fori", action="store_true", help="skip the lax.fori_loop comparison")
  ap.add_argument("--set", nargs="*", default=[])
  a = ap.parse_args()
  c = load_config(a.config, a.set)
  spec = data.DATASETS[c.data.name]
  model = build_model(c, spec.image_shape)
  raw = np.random.default_rng(0).integers(0, 256, (max(a.batch), *spec.image_shape),
                                          dtype=np.uint8)
  x_all = preprocess.eval_input(raw, spec.kind, 0)
  params = training.init_state(model, c, x_all[:8]).params
  regret = baselines.LikelihoodRegret(model, lr=2e-4, iw_samples=a.iw, weight_decay=5e-5)
  fori = None if a.no_fori else fori_loop_regret(regret)
  print(f"config={a.config} set={a.set} steps={a.steps} iw={a.iw} devices={jax.devices()}")
  for b in a.batch:
    x, keys = x_all[:b], jax.random.split(jax.random.key(0), b)
    r = rate(lambda n: regret.with_keys(params, x, keys, n), b, a.steps)
    line = f"batch={b:3d}: python-loop {r:7.1f} example-steps/s"
    if fori is not None:
      f = rate(lambda n: fori(params, x, keys, jnp.asarray(n, jnp.int32)), b, a.steps)
      line += f"   lax.fori_loop {f:7.1f} ({r / f:.1f}x)"
    t0 = time.time()
    jax.block_until_ready(regret.with_keys(params, x, keys, 0))  # the before/after bounds only
    line += f"   bounds alone {b / (time.time() - t0):6.1f} ex/s"
    print(line, flush=True)


if __name__ == "__main__":
  main()
