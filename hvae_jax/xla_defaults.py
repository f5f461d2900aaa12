"""CPU XLA defaults applied when `hvae_jax` is imported (before JAX creates its CPU client).

Measured in bench/RESULTS.md; a user's own setting of the same flag in XLA_FLAGS wins.
"""
from __future__ import annotations

import os
from importlib import metadata

# flag -> value, each measured on the paper model's CPU train step (bench/RESULTS.md):
_DEFAULTS = {
    # jaxlib 0.10 sends CPU convolutions to YNNPACK, whose gradient convolutions run slower
    # than XLA's own kernels: train step 13 -> 22 examples/s off on an AVX2 CPU, 15 -> 18 on
    # an AVX-512 one.
    "xla_cpu_experimental_ynn_fusion_type": "",
    # The memory-minimising schedule: train-step scratch 826 -> 625 MB at the same speed (the
    # concurrency-optimised default gains nothing on 2 cores).
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
}


def apply_defaults() -> None:
  """Adds each of `_DEFAULTS` to XLA_FLAGS unless the user set that flag there.

  Set before JAX creates its CPU client, i.e. before the first computation. Only for
  jaxlib >= 0.10: older versions lack these flags and would abort on them.
  """
  try:
    major, minor = (int(v) for v in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return
  if (major, minor) < (0, 10):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  added = [f"--{k}={v}" for k, v in _DEFAULTS.items() if k not in flags]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()


apply_defaults()
