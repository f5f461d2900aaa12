"""Scoring throughput (images/s) of `TrainedModel.score` on 1 and on 2 devices, in one run.

  python bench/scoring_devices.py --model=pretrained/fmnist_hvae_small --images=1000

On CPU the two devices are simulated (`--xla_force_host_platform_device_count=2`, set here
if XLA_FLAGS does not say otherwise): both share the same cores, so the figure shows what
sharding each batch costs and that the scores agree, not a speed-up. On a machine with two
real accelerators the same script measures the data-parallel speed-up.
"""
import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from hvae_jax import api, data, sharding  # pylint: disable=wrong-import-position


def timed_score(model: api.TrainedModel, images: np.ndarray, reps: int,
                **kw) -> tuple[float, float, dict]:
  """Seconds of the first call (compiling), the best of `reps` more, and the scores."""
  t0 = time.perf_counter()
  model.score(images, **kw)
  first = time.perf_counter() - t0
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    out = model.score(images, **kw)  # numpy arrays back: the time includes the transfer
    best = min(best, time.perf_counter() - t0)
  return first, best, out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="pretrained/fmnist_hvae_small")
  ap.add_argument("--data_dir", default=None, help="default: $HVAE_DATA_DIR")
  ap.add_argument("--images", type=int, default=1000)
  ap.add_argument("--batch_size", type=int, default=250)
  ap.add_argument("--iw_samples", type=int, default=1)
  ap.add_argument("--reps", type=int, default=3)
  a = ap.parse_args()
  every = api.load_model(a.model)
  images = data.load_images("fashion_mnist", "test", a.data_dir, "npz")[:a.images]
  kw = dict(iw_samples=a.iw_samples, batch_size=a.batch_size)
  print(f"model={a.model} images={len(images)} batch_size={a.batch_size} "
        f"iw_samples={a.iw_samples} devices={jax.devices()}")
  results = {}
  for n in sorted({1, jax.device_count()}):
    model = dataclasses.replace(every, mesh=sharding.make_data_mesh(jax.devices()[:n]), _fns={})
    first, best, results[n] = timed_score(model, images, a.reps, **kw)
    print(f"{n} device(s): {len(images) / best:8.1f} images/s (best of {a.reps}: {best:.2f} s; "
          f"first call with compiling {first:.1f} s)")
  diff = max(float(np.max(np.abs(results[1][k] - results[jax.device_count()][k])))
             for k in results[1])
  print(f"max |score(1 device) - score({jax.device_count()} devices)|: {diff:.2e} nats")


if __name__ == "__main__":
  main()
