"""How a step's two items, the `state` pytree and the JSON `metadata` dict, go to orbax and back.

Saving: the metadata is normalised to plain JSON, typed PRNG keys are refused, and mutable
numpy leaves are copied. Restoring: each leaf comes back as its target's type (and sharding),
or, without a target, as host numpy.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hvae_jax.checkpoints.layout import METADATA_ITEM, STATE_ITEM
from hvae_jax.checkpoints.matching import path_str


def handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Orbax handlers for both items, for saving and restoring."""
  # Registering the items up front lets a fresh (e.g. evaluation) process read
  # item metadata before it has saved anything itself.
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add(STATE_ITEM, ocp.args.PyTreeSave)
  registry.add(STATE_ITEM, ocp.args.PyTreeRestore)
  registry.add(METADATA_ITEM, ocp.args.JsonSave)
  registry.add(METADATA_ITEM, ocp.args.JsonRestore)
  return registry


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


def to_json(metadata: Any) -> dict:
  """Normalises `metadata` to what JSON gives back (tuples become lists, ConfigDicts dicts).

  Round-tripping here, at save time, means `restore` returns exactly what was stored and a
  non-serialisable value fails in the caller's frame rather than in a background thread.
  """
  if hasattr(metadata, "to_dict"):
    metadata = metadata.to_dict()
  if not isinstance(metadata, dict):
    raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
  return json.loads(json.dumps(metadata, default=_json_default))


def _is_prng_key(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  try:
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
  except TypeError:
    return False


def reject_typed_keys(state: Any) -> None:
  """Raises TypeError naming the leaves of `state` that are typed PRNG keys (orbax cannot
  store them)."""
  typed_keys = [path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
                if _is_prng_key(x)]
  if typed_keys:
    raise TypeError(f"state leaves {typed_keys} are typed PRNG keys; store "
                    "jax.random.key_data(key) (a uint32 array) and wrap it again on restore")


def snapshot_leaf(x: Any) -> Any:
  """`x` frozen for an async save: numpy arrays copied, everything else as is."""
  # The async save keeps writing after `save` returns and numpy buffers are mutable; jax.Arrays
  # are immutable and orbax copies them to host before returning.
  if isinstance(x, np.ndarray):
    return np.array(x, copy=True)
  return x


def restore_args_for(leaf: Any) -> ocp.RestoreArgs:
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


def raw_restore_args_for(meta_leaf: Any) -> ocp.RestoreArgs:
  """How to materialise one saved leaf without a target, from its orbax metadata."""
  # Without a target everything comes back as host numpy: no device or sharding of the
  # writer is assumed, so an evaluation machine with another topology can read it.
  if isinstance(meta_leaf, ocp.metadata.StringMetadata):
    return ocp.RestoreArgs(restore_type=str)
  return ocp.RestoreArgs(restore_type=np.ndarray)


def like_target(target_leaf: Any, restored: Any) -> Any:
  """Gives numpy-scalar / Python-scalar target leaves their own type back."""
  if isinstance(target_leaf, np.generic):
    return target_leaf.dtype.type(restored)
  if isinstance(target_leaf, (bool, int, float, complex)) and not isinstance(restored, str):
    return type(target_leaf)(np.asarray(restored).item())
  return restored
