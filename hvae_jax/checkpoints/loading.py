"""`load_checkpoint_dir`: one finished checkpoint for evaluation, from whichever path is given."""
from __future__ import annotations

from typing import Any

from hvae_jax.checkpoints.errors import CheckpointError, no_checkpoint_message
from hvae_jax.checkpoints.layout import (CHECKPOINT_SUBDIR, TMP_SUFFIX, as_path,
                                         looks_like_step_dir)
from hvae_jax.checkpoints.manager import Checkpointer


def load_checkpoint_dir(path: str, target: Any | None = None) -> tuple[Any, dict]:
  """Loads `(state, metadata)` for evaluation from a workdir or from one step directory.

  `path` is a directory holding step directories (its latest finished step is used), a
  training --workdir whose steps live in `path/checkpoints/` (train_lib's layout), or one
  step directory (e.g. `.../checkpoints/2000`). Nothing is written. `target` is passed to
  `Checkpointer.restore` (None: nested dicts of numpy arrays).

  The step's files are checked against its checksum manifest (see `Checkpointer.verify`).

  Raises:
    CorruptCheckpointError: the step fails its checksums (naming the file and the step) or
      cannot be read.
    CheckpointError: the path is missing, not a directory, an unfinished save, holds no
      checkpoint, or the checkpoint does not match `target`.
  """
  p = as_path(path)
  if not p.exists():
    raise CheckpointError(no_checkpoint_message(p))
  if not p.is_dir():
    raise CheckpointError(f"{p} is a file, not a checkpoint; pass a training workdir or a "
                          "step directory inside one")
  if TMP_SUFFIX in p.name:
    raise CheckpointError(f"{p} is an unfinished checkpoint (its save was interrupted); pass "
                          f"the workdir {p.parent} to use its latest finished step")
  if looks_like_step_dir(p):
    with Checkpointer(str(p.parent), read_only=True) as ckpt:
      return ckpt.restore(int(p.name), target=target)
  for workdir in (p, p / CHECKPOINT_SUBDIR):
    if workdir.is_dir():
      with Checkpointer(str(workdir), read_only=True) as ckpt:
        if ckpt.latest_step() is not None:
          return ckpt.restore(None, target=target)
  raise CheckpointError(no_checkpoint_message(p))
