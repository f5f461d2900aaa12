"""`Checkpointer`: periodic, atomic, resumable checkpoints over orbax's CheckpointManager.

Training saves a pytree `state` (train_lib's TrainState: step, params, optimiser state; the
RNG key and the data order follow from the config's seed and the step) plus a JSON `metadata`
dict (config, image shape, ...) every few steps, and resumes exactly from the latest one
after a kill. Directory layout: see `layout`.

Atomicity: orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it to
`<step>` only once every item is complete (on GCS, where renames are not atomic, it writes
a `commit_success.txt` marker instead). A kill during a save therefore leaves at most a tmp
directory, which is never listed as a step, and the writer removes it on its next start.

Integrity: a background thread writes each committed step's checksum manifest (`integrity`),
and every restore checks it first; `restore_newest_valid` (training's resume) moves corrupt
steps aside and falls back to the newest step that verifies.

Multi-host: all public methods must be called on every process (orbax synchronises the hosts
and lets only the primary one write shared files); only process 0 writes manifests and moves
corrupt steps aside, the others wait for the move.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from etils import epath
import jax
import orbax.checkpoint as ocp

from hvae_jax.checkpoints.errors import (CheckpointError, CorruptCheckpointError, corrupt_step,
                                         no_checkpoint_message, short)
from hvae_jax.checkpoints.integrity import verify_manifest, write_manifest
from hvae_jax.checkpoints.items import (handler_registry, like_target, raw_restore_args_for,
                                        reject_typed_keys, restore_args_for, snapshot_leaf,
                                        to_json)
from hvae_jax.checkpoints.layout import (CORRUPT_SUFFIX, METADATA_ITEM, STATE_ITEM, TMP_SUFFIX,
                                         as_path)
from hvae_jax.checkpoints.matching import check_compatible

log = logging.getLogger(__name__)


class _DropReadOnlyNotice(logging.Filter):
  """Orbax warns 'Given directory is read only' on every read-only open; for evaluation
  that is the intended mode, not news."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_DropReadOnlyNotice())


class Checkpointer:
  """Saves and restores (state, metadata) checkpoints in one workdir.

  Wraps `orbax.checkpoint.CheckpointManager` with two items per step: `state` (a pytree of
  numpy/jax arrays and scalars) and `metadata` (a JSON dict). Saves are asynchronous: `save`
  returns once device arrays are copied to host; `wait()` blocks until the step is on disk
  with its checksum manifest.

  Args:
    directory: the workdir holding step directories (created unless `read_only`).
    max_to_keep: how many most recent steps to keep (None keeps all).
    read_only: for evaluation: never creates, writes or deletes anything, and `latest_step`
      rereads the directory so it sees steps a concurrent training job finished.
  """

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3, *,
               read_only: bool = False):
    self._path = as_path(directory)
    self._read_only = read_only
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if self._path.exists() and not self._path.is_dir():
      raise CheckpointError(f"{self._path} is a file, not a checkpoint directory; pass a "
                            "training workdir (--workdir) or a step directory inside one")
    if read_only:
      # Orbax ignores these when read_only (with a warning); pass the values it would use.
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0, max_to_keep=None)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep,
          create=True,
          # Drop `<step>.orbax-checkpoint-tmp` dirs left by a save that was killed.
          cleanup_tmp_directories=True,
          enable_async_checkpointing=True,
      )
    try:
      self._manager = ocp.CheckpointManager(self._path, options=options,
                                            handler_registry=handler_registry())
    except Exception as err:  # e.g. permission denied, unreadable step listing
      raise CheckpointError(f"cannot open checkpoint directory {self._path}: "
                            f"{short(err)}") from None
    self._closed = False
    self._manifest_writer: Optional[threading.Thread] = None

  # -- bookkeeping ---------------------------------------------------------------------

  @property
  def directory(self) -> epath.Path:
    return self._path

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError(f"Checkpointer for {self._path} is closed")

  def step_dir(self, step: int) -> epath.Path:
    """The directory of a finished `step` (default orbax naming: the bare step number)."""
    return self._path / str(int(step))

  def all_steps(self) -> list[int]:
    """The finished steps present, ascending."""
    self._check_open()
    if self._read_only:
      self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest finished step, or None if there is none (unfinished tmp saves don't count)."""
    self._check_open()
    if self._read_only:
      # A writer must not reload: it would forget the step it is still saving.
      self._manager.reload()
    return self._manager.latest_step()

  # -- saving --------------------------------------------------------------------------

  def save(self, step: int, state: Any, metadata: dict, force: bool = False) -> bool:
    """Starts saving `state` and `metadata` as `step`; returns whether a save was started.

    Skipped (False) when `step` is not newer than the latest step (unless `force`), or,
    with `force`, when it already exists.
    Older steps beyond `max_to_keep` are deleted once this one is complete.
    `metadata` is stored as JSON: tuples come back as lists, ConfigDicts as dicts.
    """
    self._check_open()
    if self._read_only:
      raise CheckpointError(f"{self._path} was opened read-only; cannot save step {step}")
    step = int(step)
    meta = to_json(metadata)
    reject_typed_keys(state)
    if force and step in self._manager.all_steps():
      log.info("checkpoint for step %d already exists in %s; not saving again", step,
               self._path)
      return False
    state = jax.tree_util.tree_map(snapshot_leaf, state)
    # Orbax would wait for the previous save here anyway; its manifest takes a moment more.
    self._join_manifest_writer()
    started = bool(self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.PyTreeSave(state),
            METADATA_ITEM: ocp.args.JsonSave(meta),
        }),
        force=force,
    ))
    if started and jax.process_index() == 0:
      self._manifest_writer = threading.Thread(
          target=self._write_manifest_when_committed, args=(step,), daemon=True,
          name=f"checkpoint-manifest-{step}")
      self._manifest_writer.start()
    return started

  def _write_manifest_when_committed(self, step: int) -> None:
    # In the background, so training goes on while orbax commits; every host has written
    # its files once the save is committed, so this one thread sees them all.
    try:
      self._manager.wait_until_finished()
      write_manifest(self.step_dir(step))
    except Exception as err:  # a failed save itself is raised by wait(); this only notes it
      log.warning("no checksum manifest for checkpoint step %d in %s (%s); it will load "
                  "unverified", step, self._path, short(err))

  def _join_manifest_writer(self) -> None:
    if self._manifest_writer is not None:
      self._manifest_writer.join()
      self._manifest_writer = None

  def wait(self) -> None:
    """Blocks until every started save is on disk with its manifest (old steps pruned)."""
    self._check_open()
    self._manager.wait_until_finished()
    self._join_manifest_writer()
    self._manager.check_for_errors()

  # -- restoring -----------------------------------------------------------------------

  def _resolve_step(self, step: Optional[int]) -> int:
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(no_checkpoint_message(self._path))
    if step is None:
      return steps[-1]
    step = int(step)
    if step not in steps:
      unfinished = self._path / f"{step}{TMP_SUFFIX}"
      if unfinished.exists():
        raise CheckpointError(
            f"the checkpoint for step {step} in {self._path} is unfinished (its save was "
            f"interrupted: {unfinished}); use one of the finished steps {steps}")
      raise CheckpointError(f"no checkpoint for step {step} in {self._path}; available "
                            f"steps: {steps} (omit the step to use the latest)")
    return step

  def verify(self, step: int) -> bool:
    """Checks `step`'s files against the manifest written after its save.

    Returns False, with a one-line note, for a step without a manifest (saved before
    checksums were written, or killed in the moment between commit and manifest).

    Raises:
      CorruptCheckpointError: a file differs from its checksum or is missing (names the
        file and the step), or the manifest itself is unreadable.
    """
    self._check_open()
    return verify_manifest(self.step_dir(step))

  def _read_metadata(self, step: int) -> dict:
    step_dir = self.step_dir(step)
    if not (step_dir / METADATA_ITEM).exists():
      raise corrupt_step(step_dir, f"its '{METADATA_ITEM}' item is missing")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
      metadata = restored[METADATA_ITEM]
    except Exception as err:
      raise corrupt_step(step_dir, f"cannot read its '{METADATA_ITEM}' item", err) from None
    if not isinstance(metadata, dict):
      raise corrupt_step(step_dir, f"its '{METADATA_ITEM}' item is not a JSON object")
    return metadata

  def _read_tree_metadata(self, step: int) -> Any:
    """The saved tree of per-leaf metadata (shape, dtype, ...), read without loading data."""
    step_dir = self.step_dir(step)
    if not (step_dir / STATE_ITEM).exists():
      raise corrupt_step(step_dir, f"its '{STATE_ITEM}' item is missing")
    try:
      tree_metadata = self._manager.item_metadata(step)[STATE_ITEM]
    except Exception as err:
      raise corrupt_step(step_dir, f"cannot read the structure of its '{STATE_ITEM}' item",
                         err) from None
    tree = getattr(tree_metadata, "tree", None)
    if tree is None:
      raise corrupt_step(step_dir, f"the structure file of its '{STATE_ITEM}' item is missing")
    return tree

  def restore(self, step: Optional[int] = None,
              target: Any | None = None) -> tuple[Any, dict]:
    """Restores `(state, metadata)` from `step` (default: the latest finished step).

    With `target` (a pytree like the saved state, concrete or of jax.ShapeDtypeStruct), the
    state is restored into that structure after checking that every leaf path, shape and
    dtype matches; leaves come back as the target's type: jax.Array with the target's
    sharding, ShapeDtypeStruct with sharding -> jax.Array, without -> np.ndarray, numpy and
    Python scalars as themselves. Without `target`, the state comes back as nested
    dicts/lists (orbax's stored form; namedtuples become dicts) of numpy arrays.

    The step's files are checked against its manifest first (see `verify`).

    Raises:
      CorruptCheckpointError: the step fails its checksums or cannot be read.
      CheckpointError: no checkpoint, unknown step, or a mismatching target.
    """
    self._check_open()
    step = self._resolve_step(step)
    step_dir = self.step_dir(step)
    self.verify(step)
    metadata = self._read_metadata(step)
    saved_tree = self._read_tree_metadata(step)
    if target is not None:
      check_compatible(step_dir, saved_tree, target, metadata)
      item = target
      restore_args = jax.tree_util.tree_map(restore_args_for, target)
    else:
      item = None
      restore_args = jax.tree_util.tree_map(raw_restore_args_for, saved_tree)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.PyTreeRestore(item=item, restore_args=restore_args)}))
      state = restored[STATE_ITEM]
    except Exception as err:
      # Structure was checked above, so a failure here is unreadable data, e.g. a
      # truncated or overwritten array file.
      raise corrupt_step(step_dir, f"cannot read the arrays of its '{STATE_ITEM}' item",
                         err) from None
    if target is not None:
      state = jax.tree_util.tree_map(like_target, target, state)
    return state, metadata

  def restore_newest_valid(self, target: Any | None = None,
                           report: Callable[[str], None] = log.warning) -> tuple[Any, dict]:
    """Like `restore()` of the latest step, falling back past corrupt steps (for resuming).

    Each newer step that is corrupt is moved to `<step>.corrupt` (kept for a look, no longer
    listed, so later saves are not refused as older than it) and reported, once an older
    step has restored. When no step restores, nothing is moved.

    Raises:
      CorruptCheckpointError: every step is corrupt (all are listed).
      CheckpointError: no checkpoint at all, or the newest intact step does not fit `target`.
    """
    corrupt = []
    for step in reversed(self.all_steps()):
      try:
        restored = self.restore(step, target=target)
      except CorruptCheckpointError as err:
        corrupt.append(err)
        continue
      for err in corrupt:
        moved = self._move_aside(err.step)
        report(f"checkpoint step {err.step} in {self._path} is corrupt ({err.problem}); "
               f"moved it to {moved} and resumed from step {step} instead")
      return restored
    if not corrupt:
      raise CheckpointError(no_checkpoint_message(self._path))
    listed = "; ".join(f"step {err.step}: {err.problem}" for err in corrupt)
    raise CorruptCheckpointError(
        f"no intact checkpoint in {self._path}, every step is corrupt ({listed}). Nothing "
        "was moved or deleted: restore the directory from a backup, or move its steps "
        "away to start over", corrupt[0].step, listed)

  def _move_aside(self, step: int) -> epath.Path:
    """Renames a corrupt step out of orbax's listing; returns where it went."""
    if self._read_only:
      raise CheckpointError(f"{self._path} was opened read-only; cannot move the corrupt "
                            f"step {step} aside")
    base = self.step_dir(step)
    dest, n = base.parent / f"{base.name}{CORRUPT_SUFFIX}", 1
    while dest.exists():
      dest, n = base.parent / f"{base.name}{CORRUPT_SUFFIX}.{n}", n + 1
    # Every host has picked the same name before host 0 renames, and sees the rename after.
    ocp.multihost.sync_global_processes(f"hvae_jax_move_aside_named_{step}")
    if jax.process_index() == 0:
      base.rename(dest)
    ocp.multihost.sync_global_processes(f"hvae_jax_move_aside_done_{step}")
    self._manager.reload()
    return dest

  # -- lifetime ------------------------------------------------------------------------

  def close(self) -> None:
    """Waits for pending saves and deletions, then releases orbax's resources. Idempotent."""
    if self._closed:
      return
    self._closed = True
    self._join_manifest_writer()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def __repr__(self) -> str:
    mode = "read-only" if self._read_only else "read-write"
    return f"Checkpointer({str(self._path)!r}, {mode})"
