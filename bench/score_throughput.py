"""Scoring throughput of `TrainedModel.score` (every k): images/s after compilation, and the
process's peak RSS.

  python bench/score_throughput.py --model=pretrained/fmnist_hvae --images=1000
  python bench/score_throughput.py --iw_samples=10 --batch_size=100 --images=200 --max_passes=-1
  python bench/compare_commits.py 7021f0a . --bench "$PWD/bench/score_throughput.py"

Imports `hvae_jax` from the path Python finds first (PYTHONPATH), so the bisect tool can run
this one file against the code of several commits. A measurement, not a test.
"""
import argparse
import resource
import time

import numpy as np

from hvae_jax import data, load_model


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="pretrained/fmnist_hvae")
  ap.add_argument("--images", type=int, default=1000)
  ap.add_argument("--batch_size", type=int, default=500)
  ap.add_argument("--iw_samples", type=int, default=1, help="S of both bounds")
  ap.add_argument("--max_passes", type=int, default=None,
                  help="config.eval.max_passes (default: the model's config)")
  a = ap.parse_args()
  m = load_model(a.model)
  if a.max_passes is not None:
    m.config.eval.max_passes = a.max_passes
  x = data.load_images("fashion_mnist", "test")[:a.images + a.batch_size]
  kw = dict(batch_size=a.batch_size, iw_samples=a.iw_samples, iw_samples_lk=a.iw_samples)
  m.score(x[:a.batch_size], **kw)  # compiles
  t0 = time.perf_counter()
  s = m.score(x[a.batch_size:], **kw)
  dt = time.perf_counter() - t0
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"scores={len(s)} images={a.images} S={a.iw_samples} batch={a.batch_size} "
        f"max_passes={a.max_passes} peak_rss_mb={rss:.0f} examples_per_s={a.images / dt:.1f}")


if __name__ == "__main__":
  main()
