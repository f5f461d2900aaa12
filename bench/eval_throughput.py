"""Evaluation throughput (examples/s) and peak memory of the OOD scores.

  python bench/eval_throughput.py --config=configs/fmnist_hvae.py --batch=500

Times, on random binarized inputs: the ELBO alone, ELBO + every L^{>k} (one call, shared
bottom-up pass), and IW LLR^{>k} with S = 1, 10, 100, 1000 samples (chunked). Peak memory is
the process's max RSS on CPU, or the device's peak_bytes_in_use where the backend reports it.
"""
import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from bench.train_step import load_config  # pylint: disable=wrong-import-position
from hvae_jax import data, ood, preprocess, training  # pylint: disable=wrong-import-position
from hvae_jax.models import build_model  # pylint: disable=wrong-import-position


def peak_memory_mb() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, *args, reps=2):
  t0 = time.time()
  jax.block_until_ready(fn(*args))
  first = time.time() - t0
  t0 = time.time()
  for _ in range(reps):
    out = fn(*args)
  jax.block_until_ready(out)
  return first, (time.time() - t0) / reps


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/fmnist_hvae.py")
  ap.add_argument("--batch", type=int, default=500)
  ap.add_argument("--iw", type=int, nargs="*", default=[1, 10, 100, 1000])
  ap.add_argument("--iw_batch", type=int, default=100, help="batch for the IW runs")
  ap.add_argument("--chunk", type=int, default=16)
  ap.add_argument("--set", nargs="*", default=[])
  a = ap.parse_args()
  c = load_config(a.config, a.set)
  spec = data.DATASETS[c.data.name]
  model = build_model(c, spec.image_shape)
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 256, (max(a.batch, a.iw_batch), *spec.image_shape), dtype=np.uint8)
  x_all = preprocess.eval_input(raw, spec.kind, 0)
  params = training.init_state(model, c, x_all[:128]).params
  key = jax.random.key(0)
  print(f"config={a.config} set={a.set} devices={jax.devices()}")
  x = x_all[:a.batch]
  elbo_fn = jax.jit(lambda p, x, k: ood.iw_bounds(model, p, x, k, (0,), 1))
  c_s, t = timed(elbo_fn, params, x, key)
  print(f"ELBO                 batch={a.batch}: {a.batch / t:8.1f} ex/s (compile+first {c_s:.1f}s)")
  all_k = ood.make_score_fn(model)
  c_s, t = timed(all_k, params, x, key)
  print(f"ELBO + all L>k       batch={a.batch}: {a.batch / t:8.1f} ex/s (compile+first {c_s:.1f}s)")
  x = x_all[:a.iw_batch]
  for s in a.iw:
    fn = ood.make_score_fn(model, iw_samples_elbo=s, iw_samples_lk=s, chunk_size=a.chunk)
    c_s, t = timed(fn, params, x, key, reps=1)
    print(f"IW LLR all k, S={s:<5d} batch={a.iw_batch}: {a.iw_batch / t:8.2f} ex/s "
          f"(compile+first {c_s:.1f}s) peak mem {peak_memory_mb():.0f} MB")


if __name__ == "__main__":
  main()
