"""Periodic, atomic, resumable checkpoints (a thin layer over orbax's CheckpointManager).

Training saves a pytree `state` (params, optimiser state, step, RNG key data, data position,
...) plus a JSON `metadata` dict (config, model name, ...) every few steps and resumes exactly
from the latest one after a kill; evaluation loads them with `load_checkpoint_dir`. Every way
a checkpoint can be missing, unfinished, corrupt or built for another model surfaces as one
`CheckpointError` whose message names the directory and what to do, instead of an
orbax/tensorstore traceback.

On-disk layout of a checkpoint directory (orbax's default step naming, no prefix); training
uses `WORKDIR/checkpoints/`, and `load_checkpoint_dir` accepts either level::

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

Atomicity: orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it to
`<step>` only once every item is complete (on GCS, where renames are not atomic, it writes
a `commit_success.txt` marker instead). A kill during a save therefore leaves at most a tmp
directory, which is never listed as a step, and the writer removes it on its next start.

Integrity: orbax stores no checksum of array data, so a flipped byte would load silently.
Once orbax has committed a step, a background thread writes its `SHA256SUMS` (temp file +
rename); every restore checks the files against it first, and a mismatch is a
`CorruptCheckpointError` naming the file and the step. Steps saved before manifests existed
load unverified, with a one-line note. `restore_newest_valid` (training's resume) moves
corrupt steps aside and falls back to the newest step that verifies.

Multi-host: all public methods must be called on every process (orbax synchronises the hosts
and lets only the primary one write shared files); only process 0 writes manifests and moves
corrupt steps aside, the others wait for the move.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from typing import Any, Callable, Optional

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer", "CorruptCheckpointError", "load_checkpoint_dir",
           "match_params"]

log = logging.getLogger(__name__)

STATE_ITEM = "state"
METADATA_ITEM = "metadata"
# Where training keeps a workdir's checkpoints (train_lib: WORKDIR/checkpoints/<step>/).
CHECKPOINT_SUBDIR = "checkpoints"
# Orbax's suffix for unfinished saves (orbax/checkpoint/_src/path/atomicity_types.py).
TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Checksums of a step's files, in `sha256sum` format: `cd <step> && sha256sum -c SHA256SUMS`.
MANIFEST = "SHA256SUMS"
_MANIFEST_TMP = MANIFEST + ".tmp"
CORRUPT_SUFFIX = ".corrupt"
_MAX_LISTED_MISMATCHES = 5


class _DropReadOnlyNotice(logging.Filter):
  """Orbax warns 'Given directory is read only' on every read-only open; for evaluation
  that is the intended mode, not news."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_DropReadOnlyNotice())


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


def _no_checkpoint_message(directory: Any) -> str:
  return (f"no checkpoint found in {directory}; train first with "
          f"python train.py --workdir={directory} or pass --checkpoint")


def _as_path(directory: Any) -> epath.Path:
  path = epath.Path(directory)
  # Absolute local paths make every message unambiguous (cloud URLs are left alone).
  if "://" not in str(directory):
    path = epath.Path(str(path.expanduser().absolute()))
  return path


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  # Registering the items up front lets a fresh (e.g. evaluation) process read
  # item metadata before it has saved anything itself.
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add(STATE_ITEM, ocp.args.PyTreeSave)
  registry.add(STATE_ITEM, ocp.args.PyTreeRestore)
  registry.add(METADATA_ITEM, ocp.args.JsonSave)
  registry.add(METADATA_ITEM, ocp.args.JsonRestore)
  return registry


def _short(err: BaseException) -> str:
  """One line of an underlying error, without tensorstore's multi-kB spec dump."""
  text = str(err).split(" [tensorstore_spec=")[0].strip().splitlines()
  line = text[0] if text else ""
  if len(line) > 300:
    line = line[:297] + "..."
  return f"{type(err).__name__}: {line}" if line else type(err).__name__


def _json_default(obj: Any) -> Any:
  if hasattr(obj, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
    return obj.to_dict()
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, (np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  if isinstance(obj, (set, frozenset)):
    return sorted(obj)
  raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serialisable")


def _to_json(metadata: Any) -> dict:
  """Normalises `metadata` to what JSON gives back (tuples become lists, ConfigDicts dicts).

  Round-tripping here, at save time, means `restore` returns exactly what was stored and a
  non-serialisable value fails in the caller's frame rather than in a background thread.
  """
  if hasattr(metadata, "to_dict"):
    metadata = metadata.to_dict()
  if not isinstance(metadata, dict):
    raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
  return json.loads(json.dumps(metadata, default=_json_default))


def _key_str(entry: Any) -> str:
  for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _path_str(keypath: tuple) -> str:
  # Orbax stores namedtuples and dataclasses as dicts and tuples as lists, so naming each
  # key by its bare name/index makes a model path and a checkpoint path compare equal.
  return "/".join(_key_str(k) for k in keypath) or "<root>"


def _is_prng_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  try:
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
  except TypeError:
    return False


def _leaf_spec(x: Any) -> tuple[tuple[int, ...], Optional[str]]:
  """(shape, dtype name) of a model or checkpoint leaf; dtype None for Python scalars."""
  if isinstance(x, (bool, int, float, complex)):
    return (), None  # saved as 0-d arrays whose dtype depends on numpy's defaults
  if isinstance(x, str):
    return (), "str"
  if isinstance(x, ocp.metadata.StringMetadata):
    return (), "str"
  shape = getattr(x, "shape", None)
  dtype = getattr(x, "dtype", None)
  if shape is None:
    return np.shape(x), str(np.asarray(x).dtype)
  return tuple(int(d) for d in shape), (None if dtype is None else str(dtype))


def _fmt_shape(shape: tuple[int, ...]) -> str:
  return "(" + ",".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _flat_leaves(tree: Any) -> list[tuple[str, Any]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(_path_str(path), leaf) for path, leaf in leaves]


def _flat_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], Optional[str]]]:
  return {path: _leaf_spec(leaf) for path, leaf in _flat_leaves(tree)}


def _describe_config(metadata: dict) -> str:
  """The part of the metadata that tells the user which model/config wrote a checkpoint."""
  parts = []
  for key in ("model", "model_name"):
    if key in metadata:
      parts.append(f"{key}={json.dumps(metadata[key], sort_keys=True)}")
  if "config" in metadata:
    parts.append(f"config={json.dumps(metadata['config'], sort_keys=True)}")
  if not parts:
    return "The checkpoint's metadata records no config."
  text = ", ".join(parts)
  if len(text) > 2000:
    text = text[:1997] + "..."
  return f"The checkpoint was saved with {text}."


def _mismatches(saved: dict, model: dict, prefix: str = "") -> list[str]:
  """'path: checkpoint (5,5,64,64) vs model (3,3,64,64)'-style lines, parameters first."""
  problems = []
  for path, (shape, dtype) in model.items():
    name = prefix + path
    if path not in saved:
      problems.append(f"{name}: missing from checkpoint (model {_fmt_shape(shape)})")
      continue
    saved_shape, saved_dtype = saved[path]
    dtype_differs = dtype is not None and saved_dtype is not None and dtype != saved_dtype
    if dtype_differs:
      problems.append(f"{name}: checkpoint {_fmt_shape(saved_shape)} {saved_dtype} vs "
                      f"model {_fmt_shape(shape)} {dtype}")
    elif saved_shape != shape:
      problems.append(f"{name}: checkpoint {_fmt_shape(saved_shape)} vs "
                      f"model {_fmt_shape(shape)}")
  for path, (shape, _) in saved.items():
    if path not in model:
      problems.append(f"{prefix}{path}: in checkpoint {_fmt_shape(shape)} but not in model")
  # Parameter mismatches first: they are the cause, optimiser-state ones the echo.
  problems.sort(key=lambda text: not text.startswith("params/"))
  return problems


def _mismatch_error(where: Any, problems: list[str], metadata: dict) -> CheckpointError:
  listed = "\n  ".join(problems[:_MAX_LISTED_MISMATCHES])
  more = len(problems) - _MAX_LISTED_MISMATCHES
  more_text = f"\n  ... and {more} more" if more > 0 else ""
  return CheckpointError(
      f"checkpoint {where} does not match the model "
      f"({len(problems)} mismatching leaves):\n  {listed}{more_text}\n"
      f"{_describe_config(metadata)} Load it with that config (same --config and "
      "overrides), or train the new model in a fresh --workdir.")


def match_params(params: Any, target: Any, path: Any,
                 metadata: Optional[dict] = None) -> Any:
  """Puts raw restored `params` (nested dicts of arrays) into the structure of `target`.

  For loading without a full training-state target (e.g. `load_checkpoint_dir(path)` then
  the model's `jax.eval_shape`d params): checks every leaf path, shape and dtype like
  `Checkpointer.restore(target=...)` does and returns the checkpoint's arrays arranged as
  `target` (a FrozenDict target gives a FrozenDict, and so on).

  Raises:
    CheckpointError: naming `path`, the first mismatching leaves and the saved config.
  """
  saved = {p: leaf for p, leaf in _flat_leaves(params)}
  model = _flat_leaves(target)
  problems = _mismatches({p: _leaf_spec(x) for p, x in saved.items()},
                         {p: _leaf_spec(x) for p, x in model}, prefix="params/")
  if problems:
    raise _mismatch_error(path, problems, metadata or {})
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target),
                                      [saved[p] for p, _ in model])


def _restore_args_for(leaf: Any) -> ocp.RestoreArgs:
  """How to materialise one target leaf: as the target's type (and sharding) says."""
  if isinstance(leaf, jax.Array):
    return ocp.ArrayRestoreArgs(restore_type=jax.Array, sharding=leaf.sharding,
                                global_shape=leaf.shape, dtype=leaf.dtype)
  if isinstance(leaf, jax.ShapeDtypeStruct):
    if getattr(leaf, "sharding", None) is not None:
      return ocp.ArrayRestoreArgs(restore_type=jax.Array, sharding=leaf.sharding,
                                  global_shape=leaf.shape, dtype=leaf.dtype)
    # Abstract leaf without a sharding: host memory, the caller places it.
    return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
  if isinstance(leaf, (np.ndarray, np.generic)):
    return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
  if isinstance(leaf, str):
    return ocp.RestoreArgs(restore_type=str)
  if isinstance(leaf, (bool, int, float, complex)):
    return ocp.RestoreArgs(restore_type=np.ndarray)
  raise TypeError(f"unsupported target leaf type {type(leaf).__name__}")


def _raw_restore_args_for(meta_leaf: Any) -> ocp.RestoreArgs:
  # Without a target everything comes back as host numpy: no device or sharding of the
  # writer is assumed, so an evaluation machine with another topology can read it.
  if isinstance(meta_leaf, ocp.metadata.StringMetadata):
    return ocp.RestoreArgs(restore_type=str)
  return ocp.RestoreArgs(restore_type=np.ndarray)


def _like_target(target_leaf: Any, restored: Any) -> Any:
  """Gives numpy-scalar / Python-scalar target leaves their own type back."""
  if isinstance(target_leaf, np.generic):
    return target_leaf.dtype.type(restored)
  if isinstance(target_leaf, (bool, int, float, complex)) and not isinstance(restored, str):
    return type(target_leaf)(np.asarray(restored).item())
  return restored


def _snapshot_leaf(x: Any) -> Any:
  # The async save keeps writing after `save` returns; numpy buffers are mutable, so copy
  # them (cheap: only small host-side leaves such as the data position live there).
  # jax.Arrays are immutable and orbax copies them to host before returning.
  if isinstance(x, np.ndarray):
    return np.array(x, copy=True)
  return x


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _files(directory: epath.Path, prefix: str = "") -> list[tuple[str, epath.Path]]:
  """Every file below `directory`, as ('/'-separated relative name, path); epath has no rglob
  for cloud paths."""
  found = []
  for path in directory.iterdir():
    if path.is_dir():
      found += _files(path, f"{prefix}{path.name}/")
    else:
      found.append((prefix + path.name, path))
  return found


def _checksums(step_dir: epath.Path) -> dict[str, str]:
  """sha256 of every file in `step_dir` but the manifest itself, by relative name."""
  return {name: _sha256(path) for name, path in _files(step_dir)
          if name not in (MANIFEST, _MANIFEST_TMP)}


def _write_manifest(step_dir: epath.Path) -> None:
  text = "".join(f"{digest}  {name}\n" for name, digest in sorted(_checksums(step_dir).items()))
  tmp = step_dir / _MANIFEST_TMP
  tmp.write_text(text)
  tmp.rename(step_dir / MANIFEST)  # atomic: a reader sees the whole manifest or none


def _read_manifest(path: epath.Path) -> dict[str, str]:
  """{file: sha256} from a `sha256sum`-format file; ValueError if a line is malformed."""
  sums = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
    if not match:
      raise ValueError(f"line {number} is not '<sha256>  <file>'")
    sums[match.group(2)] = match.group(1)
  return sums


class Checkpointer:
  """Saves and restores (state, metadata) checkpoints in one workdir.

  Wraps `orbax.checkpoint.CheckpointManager` with two items per step: `state` (a pytree of
  numpy/jax arrays and scalars) and `metadata` (a JSON dict). Saves are asynchronous: `save`
  returns once device arrays are copied to host; `wait()` blocks until the step is on disk
  with its checksum manifest.

  Args:
    directory: the workdir holding step directories (created unless `read_only`).
    max_to_keep: how many most recent steps to keep (None keeps all).
    save_interval_steps: `save(step, ...)` writes only when `step % save_interval_steps == 0`
      (or the workdir has no checkpoint yet, or `force=True`).
    read_only: for evaluation: never creates, writes or deletes anything, and `latest_step`
      rereads the directory so it sees steps a concurrent training job finished.
  """

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3,
               save_interval_steps: int = 1, *, read_only: bool = False):
    self._path = _as_path(directory)
    self._read_only = read_only
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
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
          save_interval_steps=save_interval_steps,
          create=True,
          # Drop `<step>.orbax-checkpoint-tmp` dirs left by a save that was killed.
          cleanup_tmp_directories=True,
          enable_async_checkpointing=True,
      )
    try:
      self._manager = ocp.CheckpointManager(self._path, options=options,
                                            handler_registry=_handler_registry())
    except Exception as err:  # e.g. permission denied, unreadable step listing
      raise CheckpointError(f"cannot open checkpoint directory {self._path}: "
                            f"{_short(err)}") from None
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

    Skipped (False) when `step` is not a multiple of `save_interval_steps` (unless `force`),
    when it is not newer than the latest step, or, with `force`, when it already exists.
    Older steps beyond `max_to_keep` are deleted once this one is complete.
    `metadata` is stored as JSON: tuples come back as lists, ConfigDicts as dicts.
    """
    self._check_open()
    if self._read_only:
      raise CheckpointError(f"{self._path} was opened read-only; cannot save step {step}")
    step = int(step)
    meta = _to_json(metadata)
    typed_keys = [_path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
                  if _is_prng_key(x)]
    if typed_keys:
      raise TypeError(f"state leaves {typed_keys} are typed PRNG keys; store "
                      "jax.random.key_data(key) (a uint32 array) and wrap it again on restore")
    if force and step in self._manager.all_steps():
      log.info("checkpoint for step %d already exists in %s; not saving again", step,
               self._path)
      return False
    state = jax.tree_util.tree_map(_snapshot_leaf, state)
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
      _write_manifest(self.step_dir(step))
    except Exception as err:  # a failed save itself is raised by wait(); this only notes it
      log.warning("no checksum manifest for checkpoint step %d in %s (%s); it will load "
                  "unverified", step, self._path, _short(err))

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
      raise CheckpointError(_no_checkpoint_message(self._path))
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

  def _corrupt(self, step: int, what: str,
               err: Optional[BaseException] = None) -> CorruptCheckpointError:
    problem = what + (f" ({_short(err)})" if err is not None else "")
    return CorruptCheckpointError(
        f"checkpoint {self.step_dir(step)} is corrupt or incomplete: {problem}. "
        f"Delete that step directory to fall back to an earlier step of {self._path}, "
        "or pass another --checkpoint", step, problem)

  def verify(self, step: int) -> bool:
    """Checks `step`'s files against the manifest written after its save.

    Returns False, with a one-line note, for a step without a manifest (saved before
    checksums were written, or killed in the moment between commit and manifest).

    Raises:
      CorruptCheckpointError: a file differs from its checksum or is missing (names the
        file and the step), or the manifest itself is unreadable.
    """
    self._check_open()
    step_dir = self.step_dir(step)
    manifest = step_dir / MANIFEST
    if not manifest.exists():
      log.warning("note: checkpoint %s has no %s (saved without checksums); loading it "
                  "unverified", step_dir, MANIFEST)
      return False
    try:
      expected = _read_manifest(manifest)
    except (OSError, UnicodeDecodeError, ValueError) as err:
      raise self._corrupt(step, f"its {MANIFEST} is unreadable", err) from None
    for name, digest in sorted(expected.items()):
      path = step_dir / name
      if not path.is_file():
        raise self._corrupt(step, f"file {name} listed in its {MANIFEST} is missing")
      if _sha256(path) != digest:
        raise self._corrupt(step, f"file {name} does not match the sha256 recorded in its "
                                  f"{MANIFEST} when step {step} was saved")
    return True

  def _read_metadata(self, step: int) -> dict:
    if not (self.step_dir(step) / METADATA_ITEM).exists():
      raise self._corrupt(step, f"its '{METADATA_ITEM}' item is missing")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
      metadata = restored[METADATA_ITEM]
    except Exception as err:
      raise self._corrupt(step, f"cannot read its '{METADATA_ITEM}' item", err) from None
    if not isinstance(metadata, dict):
      raise self._corrupt(step, f"its '{METADATA_ITEM}' item is not a JSON object")
    return metadata

  def _read_tree_metadata(self, step: int) -> Any:
    """The saved tree of per-leaf metadata (shape, dtype, ...), read without loading data."""
    if not (self.step_dir(step) / STATE_ITEM).exists():
      raise self._corrupt(step, f"its '{STATE_ITEM}' item is missing")
    try:
      tree_metadata = self._manager.item_metadata(step)[STATE_ITEM]
    except Exception as err:
      raise self._corrupt(step, f"cannot read the structure of its '{STATE_ITEM}' item",
                          err) from None
    tree = getattr(tree_metadata, "tree", None)
    if tree is None:
      raise self._corrupt(step, f"the structure file of its '{STATE_ITEM}' item is missing")
    return tree

  def _check_compatible(self, step: int, saved_tree: Any, target: Any,
                        metadata: dict) -> None:
    """Raises CheckpointError listing leaves whose path, shape or dtype differ."""
    problems = _mismatches(_flat_specs(saved_tree), _flat_specs(target))
    if problems:
      raise _mismatch_error(self.step_dir(step), problems, metadata)

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
    self.verify(step)
    metadata = self._read_metadata(step)
    saved_tree = self._read_tree_metadata(step)
    if target is not None:
      self._check_compatible(step, saved_tree, target, metadata)
      item = target
      restore_args = jax.tree_util.tree_map(_restore_args_for, target)
    else:
      item = None
      restore_args = jax.tree_util.tree_map(_raw_restore_args_for, saved_tree)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          STATE_ITEM: ocp.args.PyTreeRestore(item=item, restore_args=restore_args)}))
      state = restored[STATE_ITEM]
    except Exception as err:
      # Structure was checked above, so a failure here is unreadable data, e.g. a
      # truncated or overwritten array file.
      raise self._corrupt(step, f"cannot read the arrays of its '{STATE_ITEM}' item",
                          err) from None
    if target is not None:
      state = jax.tree_util.tree_map(_like_target, target, state)
    return state, metadata

  def restore_metadata(self, step: Optional[int] = None) -> dict:
    """The JSON metadata of `step` (default: latest), without loading any arrays (unverified)."""
    self._check_open()
    return self._read_metadata(self._resolve_step(step))

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
      raise CheckpointError(_no_checkpoint_message(self._path))
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


def _looks_like_step_dir(path: epath.Path) -> bool:
  if not re.fullmatch(r"\d+", path.name):
    return False
  return any((path / name).exists()
             for name in (STATE_ITEM, METADATA_ITEM, "_CHECKPOINT_METADATA"))


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
  p = _as_path(path)
  if not p.exists():
    raise CheckpointError(_no_checkpoint_message(p))
  if not p.is_dir():
    raise CheckpointError(f"{p} is a file, not a checkpoint; pass a training workdir or a "
                          "step directory inside one")
  if TMP_SUFFIX in p.name:
    raise CheckpointError(f"{p} is an unfinished checkpoint (its save was interrupted); pass "
                          f"the workdir {p.parent} to use its latest finished step")
  if _looks_like_step_dir(p):
    with Checkpointer(str(p.parent), read_only=True) as ckpt:
      return ckpt.restore(int(p.name), target=target)
  for workdir in (p, p / CHECKPOINT_SUBDIR):
    if workdir.is_dir():
      with Checkpointer(str(workdir), read_only=True) as ckpt:
        if ckpt.latest_step() is not None:
          return ckpt.restore(None, target=target)
  raise CheckpointError(_no_checkpoint_message(p))
