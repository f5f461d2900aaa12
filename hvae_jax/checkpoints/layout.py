"""Where a checkpoint directory keeps what, and how a path is recognised as one step.

On-disk layout (orbax's default step naming, no prefix); training uses
`WORKDIR/checkpoints/`, and `load_checkpoint_dir` accepts either level::

  CKPT_DIR/
    <step>/                      one finished checkpoint, e.g. 2000/
      SHA256SUMS                 sha256 of every other file here (`sha256sum -c` format)
      _CHECKPOINT_METADATA       orbax step metadata (item handlers, timestamps)
      state/                     the `state` pytree (orbax PyTree handler, OCDBT + zarr)
        _METADATA                tree structure, shapes and dtypes
        manifest.ocdbt, d/...    array data
      metadata/metadata          the JSON `metadata` dict
    <step>.orbax-checkpoint-tmp  a save in progress (or one killed mid-way): ignored
    <step>.corrupt               a step that failed its checksums, moved aside on resume
"""
from __future__ import annotations

import re
from typing import Any

from etils import epath

STATE_ITEM = "state"
METADATA_ITEM = "metadata"
# Where training keeps a workdir's checkpoints (train_lib: WORKDIR/checkpoints/<step>/).
CHECKPOINT_SUBDIR = "checkpoints"
# Orbax's suffix for unfinished saves (orbax/checkpoint/_src/path/atomicity_types.py).
TMP_SUFFIX = ".orbax-checkpoint-tmp"
CORRUPT_SUFFIX = ".corrupt"


def as_path(directory: Any) -> epath.Path:
  """`directory` as an epath; local paths made absolute."""
  path = epath.Path(directory)
  # Absolute local paths make every message unambiguous (cloud URLs are left alone).
  if "://" not in str(directory):
    path = epath.Path(str(path.expanduser().absolute()))
  return path


def looks_like_step_dir(path: epath.Path) -> bool:
  """Whether `path` is one step's directory (a bare number holding orbax items)."""
  if not re.fullmatch(r"\d+", path.name):
    return False
  return any((path / name).exists()
             for name in (STATE_ITEM, METADATA_ITEM, "_CHECKPOINT_METADATA"))
