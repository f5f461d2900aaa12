"""Scoring throughput of `TrainedModel.score` (every k, S = 1): images/s after compilation.

  python bench/score_throughput.py --model=pretrained/fmnist_hvae --images=1000
  python bench/compare_commits.py 7021f0a . --bench "$PWD/bench/score_throughput.py"

Imports `hvae_jax` from the path Python finds first (PYTHONPATH), so the bisect tool can run
this one file against the code of several commits. A measurement, not a test.
"""
import argparse
import time

import numpy as np

from hvae_jax import data, load_model


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="pretrained/fmnist_hvae")
  ap.add_argument("--images", type=int, default=1000)
  ap.add_argument("--batch_size", type=int, default=500)
  a = ap.parse_args()
  m = load_model(a.model)
  x = data.load_images("fashion_mnist", "test")[:a.images + a.batch_size]
  m.score(x[:a.batch_size], batch_size=a.batch_size)  # compiles
  t0 = time.perf_counter()
  s = m.score(x[a.batch_size:], batch_size=a.batch_size)
  dt = time.perf_counter() - t0
  print(f"scores={len(s)} images={a.images} examples_per_s={a.images / dt:.1f}")


if __name__ == "__main__":
  main()
