"""CPU XLA defaults applied when `hvae_jax` is imported (before JAX creates its CPU client).

Measured in bench/RESULTS.md; a user's own setting of the same flag in XLA_FLAGS wins.
"""
from __future__ import annotations

import os


def apply_defaults() -> None:
  """Turn off XLA:CPU's YNNPACK fusions unless the user set that flag in XLA_FLAGS.

  jaxlib 0.10 sends CPU convolutions to YNNPACK, which ran ours 2-10x slower than XLA's own
  kernels on the 2-core AVX2 machines we measured (bench/RESULTS.md: train step 13 -> 22
  examples/s). Set before JAX creates its CPU client, i.e. before the first computation;
  jaxlib versions without the flag would abort on it, so they are left alone.
  """
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  try:
    major, minor = (int(v) for v in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return
  if (major, minor) >= (0, 10):
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type=".strip()


apply_defaults()
