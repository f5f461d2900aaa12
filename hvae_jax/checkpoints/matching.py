"""Does a saved tree fit the model? Leaf-by-leaf path, shape and dtype checks, and their messages.

A mismatch is one `CheckpointError` listing the first mismatching leaves ('path: checkpoint
(5,5,64,64) vs model (3,3,64,64)', parameters before optimiser state) and the config the
checkpoint was saved with.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from hvae_jax.checkpoints.errors import CheckpointError

_MAX_LISTED_MISMATCHES = 5

# (shape, dtype name) of one leaf; dtype None where it does not pin one down.
LeafSpec = tuple[tuple[int, ...], Optional[str]]


def _key_str(entry: Any) -> str:
  for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_str(keypath: tuple) -> str:
  """A pytree key path as 'params/stage_0/kernel' ('<root>' for the root)."""
  # Orbax stores namedtuples and dataclasses as dicts and tuples as lists, so naming each
  # key by its bare name/index makes a model path and a checkpoint path compare equal.
  return "/".join(_key_str(k) for k in keypath) or "<root>"


def _leaf_spec(x: Any) -> LeafSpec:
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
  return [(path_str(path), leaf) for path, leaf in leaves]


def _flat_specs(tree: Any) -> dict[str, LeafSpec]:
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


def _mismatches(saved: dict[str, LeafSpec], model: dict[str, LeafSpec],
                prefix: str = "") -> list[str]:
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


def check_compatible(where: Any, saved_tree: Any, target: Any, metadata: dict) -> None:
  """Raises CheckpointError naming `where` and the leaves whose path, shape or dtype differ.

  `saved_tree` is the checkpoint's tree of per-leaf metadata (or arrays), `target` the
  model's tree (arrays or jax.ShapeDtypeStruct), `metadata` the checkpoint's JSON metadata.
  """
  problems = _mismatches(_flat_specs(saved_tree), _flat_specs(target))
  if problems:
    raise _mismatch_error(where, problems, metadata)


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
