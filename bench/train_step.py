"""Train-step throughput (examples/s) and parameter count for a config.

  python bench/train_step.py --config=configs/fmnist_hvae.py --batch=128 --steps=10

Random binarized (or uint8) inputs; reports compile time, XLA's scratch memory for one step,
steady-state examples/s and parameter count. Not a test: run it by hand and record figures
in bench/RESULTS.md.
"""
import argparse
import importlib.util
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=wrong-import-position

from hvae_jax import data, preprocess, sharding, training  # pylint: disable=wrong-import-position
from hvae_jax.layers import count_params  # pylint: disable=wrong-import-position
from hvae_jax.models import build_model  # pylint: disable=wrong-import-position


def load_config(path, overrides):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  for o in overrides:
    k, v = o.split("=", 1)
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(v) if not isinstance(node[leaf], bool) else v == "True"
  return c


def setup(c, batch_size: int):
  """The jitted data-parallel train step of config `c`, its state, one random batch of
  `batch_size` (binarized or uint8 as the data set) on the mesh, and a key."""
  spec = data.DATASETS[c.data.name]
  model = build_model(c, spec.image_shape)
  batch = np.random.default_rng(0).integers(0, 256, (batch_size, *spec.image_shape),
                                            dtype=np.uint8)
  state = training.init_state(model, c, preprocess.eval_input(batch, spec.kind, 0))
  mesh = sharding.make_data_mesh()
  state = jax.device_put(state, NamedSharding(mesh, P()))
  step = training.make_data_parallel(
      training.make_train_step(model, c, -(-60000 // batch_size), spec.kind), mesh)
  return step, state, sharding.global_batch(batch, mesh), jax.random.key(0)


def run_steps(step, state, xb, key, n: int):
  """`n` steps from `state` on the same batch: (state, seconds until the last one is done)."""
  t0 = time.perf_counter()
  for _ in range(n):
    state, m = step(state, xb, key)
  jax.block_until_ready(m)
  return state, time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/fmnist_hvae.py")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
  a = ap.parse_args()
  step, state, xb, key = setup(load_config(a.config, a.set), a.batch)
  t0 = time.time()
  compiled = training.compile_train_step(step, state, xb, key)
  compile_s = time.time() - t0
  temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20
  state, _ = run_steps(compiled, state, xb, key, 1)
  before = resource.getrusage(resource.RUSAGE_SELF)
  state, dt = run_steps(compiled, state, xb, key, a.steps)
  after = resource.getrusage(resource.RUSAGE_SELF)
  print(f"config={a.config} set={a.set} batch={a.batch} devices={jax.devices()}")
  print(f"params={count_params(state.params)} compile_s={compile_s:.1f} "
        f"xla_temp_mb={temp_mb:.0f} train_examples_per_s={a.steps * a.batch / dt:.1f}")
  # Page faults and kernel time per step: a step that maps its buffers afresh shows here.
  print(f"page_faults_per_step={(after.ru_minflt - before.ru_minflt) / a.steps:.0f} "
        f"kernel_s_per_step={(after.ru_stime - before.ru_stime) / a.steps:.3f} "
        f"max_rss_mb={after.ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
  main()
