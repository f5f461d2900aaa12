"""Per-example score caches keyed on everything that changes a score.

A cached set of scores is reused only when its key matches: a digest of the model (every
parameter's bytes and its config), the images, the scoring settings and `SCORE_VERSION`, so
a resumed or retrained model, other images, another binarization seed or a `--config`
override all rescore. The paper's scores (evaluation.py) and the competing scores
(competing.py) both store their per-set arrays here.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Optional

import jax
import numpy as np

from hvae_jax import multihost

# Bump when a change in the code changes what a score means or how it is computed, so caches
# written by older code are not reused.
SCORE_VERSION = 4  # 4: the per-layer terms of every pass


def array_digest(x: Any) -> str:
  """sha1 of an array's dtype, shape and bytes."""
  a = np.ascontiguousarray(np.asarray(x))
  h = hashlib.sha1(f"{a.dtype.str}{a.shape}".encode())
  h.update(a.tobytes())
  return h.hexdigest()


def params_digest(params: Any) -> str:
  """sha1 over every parameter leaf (name order, dtypes, shapes and bytes)."""
  h = hashlib.sha1()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(array_digest(leaf).encode())
  return h.hexdigest()


def key_of(**parts: Any) -> str:
  """The cache key of JSON-able `parts` (with the code's SCORE_VERSION)."""
  blob = json.dumps({"score_version": SCORE_VERSION, **parts}, sort_keys=True, default=str)
  return hashlib.sha1(blob.encode()).hexdigest()


class ScoreCache:
  """`.npz` files of named `[N]` arrays in `directory`, each stored with its key.

  `get` returns the arrays only if the stored key equals the one asked for (and says so in
  one line); `use=False` (`--no_cache`) never reads, but still writes, so the next run can
  reuse what this one computed. `directory=None` disables the cache. `*_partial` keep the
  part of a set an interrupted pass scored, so the next run continues it. In a run of
  several processes, process 0 alone reads and writes (its `directory`); every process gets
  what it read, so all score the same sets.
  """

  def __init__(self, directory: Optional[str], use: bool = True, verbose: bool = True):
    self.directory, self.use, self.verbose = directory, use, verbose

  def _file(self, name: str) -> str:
    return os.path.join(self.directory, f"{name}.npz")

  def _read(self, name: str, key: str) -> Optional[dict[str, np.ndarray]]:
    if not (self.directory and self.use):
      return None

    def file_bytes() -> Optional[bytes]:
      try:
        with open(self._file(name), "rb") as f:
          return f.read() or None
      except OSError:
        return None

    # Process 0's file on every process: each host may hold other caches in its own folder,
    # and a process that found scores would skip the scoring the others wait for it in.
    blob = multihost.from_process_0(file_bytes)
    if blob is None:
      return None
    try:
      with np.load(io.BytesIO(blob)) as f:
        if "_key" not in f.files or str(f["_key"]) != key:
          return None
        return {k: f[k] for k in f.files if k != "_key"}
    except (OSError, ValueError, EOFError):  # a truncated or foreign file: just rescore
      return None

  def get(self, name: str, key: str) -> Optional[dict[str, np.ndarray]]:
    arrays = self._read(name, key)
    if arrays is not None and self.verbose:
      # Other processes got process 0's bytes (`_read`), not their own folder's.
      where = self.directory if jax.process_index() == 0 else "process 0's cache folder"
      print(f"Note: {name} from the cache in {where} (same model, images and "
            f"settings); --no_cache rescores.")
    return arrays

  # What an interrupted pass scored so far, under its own name so it is never taken for a
  # whole set; the caller's key says which pass it belongs to.
  def get_partial(self, name: str, key: str) -> Optional[dict[str, np.ndarray]]:
    return self._read(f"{name}.partial", key)

  def put_partial(self, name: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    self.put(f"{name}.partial", key, arrays)

  def drop_partial(self, name: str) -> None:
    if self.directory and jax.process_index() == 0:
      try:
        os.remove(self._file(f"{name}.partial"))
      except FileNotFoundError:
        pass

  def put(self, name: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    if not self.directory or jax.process_index() != 0:  # one writer in multi-process runs
      return
    os.makedirs(self.directory, exist_ok=True)
    tmp = self._file(name) + ".tmp.npz"
    np.savez(tmp, _key=np.asarray(key), **arrays)
    os.replace(tmp, self._file(name))  # atomic: a killed run leaves no half-written cache
