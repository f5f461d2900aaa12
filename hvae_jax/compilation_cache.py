"""JAX's persistent compilation cache, which training and evaluate.py turn on from a config."""
from __future__ import annotations

import os

import jax


def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache: a second run with the same shapes skips compiling.
  An empty `path` leaves it off."""
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
