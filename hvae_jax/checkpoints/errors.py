"""The errors every checkpoint problem surfaces as, and the message parts they share.

Every way a checkpoint can be missing, unfinished, corrupt or built for another model is one
`CheckpointError` whose message names the directory and what to do, instead of an
orbax/tensorstore traceback.
"""
from __future__ import annotations

from typing import Any, Optional

from etils import epath


class CheckpointError(Exception):
  """A checkpoint is missing, unfinished, corrupt or does not fit the model.

  The message names the directory involved and what to do about it.
  """


class CorruptCheckpointError(CheckpointError):
  """One step's files are damaged: a checksum mismatch, or unreadable or missing files.

  Unlike a checkpoint that does not fit the model, an older step may still be fine; `step`
  is the damaged one and `problem` says what is wrong with it.
  """

  def __init__(self, message: str, step: int, problem: str):
    super().__init__(message)
    self.step = step
    self.problem = problem


def no_checkpoint_message(directory: Any) -> str:
  """What to say when `directory` holds no finished step."""
  return (f"no checkpoint found in {directory}; train first with "
          f"python train.py --workdir={directory} or pass --checkpoint")


def short(err: BaseException) -> str:
  """One line of an underlying error, without tensorstore's multi-kB spec dump."""
  text = str(err).split(" [tensorstore_spec=")[0].strip().splitlines()
  line = text[0] if text else ""
  if len(line) > 300:
    line = line[:297] + "..."
  return f"{type(err).__name__}: {line}" if line else type(err).__name__


def corrupt_step(step_dir: epath.Path, what: str,
                 err: Optional[BaseException] = None) -> CorruptCheckpointError:
  """The error for a damaged `step_dir` (`<checkpoint dir>/<step>`): `what` is wrong with it,
  `err` (if any) the underlying failure."""
  problem = what + (f" ({short(err)})" if err is not None else "")
  return CorruptCheckpointError(
      f"checkpoint {step_dir} is corrupt or incomplete: {problem}. "
      f"Delete that step directory to fall back to an earlier step of {step_dir.parent}, "
      "or pass another --checkpoint", int(step_dir.name), problem)
