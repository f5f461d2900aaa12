"""The decoded copy of an image folder, so that a second run reads it at once.

One `.npz` per folder and conversion rule in `<download cache>/folders/` (`$HVAE_CACHE_DIR`,
else `~/.cache/hvae_jax`: never inside the image folder, which may be read-only or shared).
Its name is a digest of what the decoded images depend on: every image file's path inside
the folder, size and modification time, the shape the images are brought to, the resize
rule and `VERSION`. A file added, removed, replaced or touched gives another digest, so a
stale copy is never read. Written atomically (`npz.save`): a killed run leaves no partial copy.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

import numpy as np

from hvae_jax.data import download, npz

VERSION = 1  # bump when decoding changes what an image file becomes
_ARRAYS = ("images", "files", "skipped", "notes")


def key(root: str, files: Sequence[str], image_shape: Sequence[int], resize: str) -> str:
  """The digest of the decoded folder: `files` are paths inside `root`."""
  h = hashlib.sha256(json.dumps({"version": VERSION, "shape": list(image_shape),
                                 "resize": resize}).encode())
  for f in files:
    st = os.stat(os.path.join(root, f))
    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()


def path_of(digest: str) -> str:
  return os.path.join(download.cache_dir(), "folders", f"{digest}.npz")


def get(digest: str) -> Optional[dict[str, np.ndarray]]:
  """The cached arrays (images `[N, H, W, C]`, files, skipped, notes), or None if there are
  none or they cannot be read (then the folder is decoded again)."""
  try:
    with np.load(path_of(digest), allow_pickle=False) as f:
      return {k: f[k] for k in _ARRAYS}
  except (OSError, ValueError, KeyError, EOFError):
    return None


def put(digest: str, arrays: dict[str, np.ndarray]) -> Optional[str]:
  """Writes the arrays atomically; returns None, or why they could not be written."""
  final = path_of(digest)
  try:
    os.makedirs(os.path.dirname(final), exist_ok=True)
    npz.save(final, {k: arrays[k] for k in _ARRAYS})
  except OSError as e:
    return f"{final}: {e.strerror or e}"
  return None
