"""Hand freed heap memory back to the operating system between the phases of a run.

glibc keeps what a process frees on its heap: the compiler's many small allocations (an
XLA:CPU compile of the paper model's train step leaves ~0.5 GB) and the data-dependent init
pass stay resident, while XLA's large per-call buffers are fresh mmaps that cannot reuse them.
A training process then peaks at init + compile + step instead of the largest of them
(bench/RESULTS.md: peak train RSS). `malloc_trim(0)` returns those free pages.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Callable, Optional


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  return getattr(libc, "malloc_trim", None)  # absent on musl


def release_freed() -> bool:
  """Returns the free pages of the C heap to the OS (glibc); False where there is no such
  call (macOS, Windows, musl), which changes nothing else."""
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True
