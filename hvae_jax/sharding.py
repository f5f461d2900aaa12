"""Batches on a device mesh: one 'data' axis over the devices, each batch split along it.

`jax.jit` with `NamedSharding` does the data parallelism (parameters replicated, the batch
axis sharded); in a multi-process run each process places only its own devices' rows.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """1-D mesh with axis 'data' over `devices` (default: all devices).

  Axis type Auto (jax.make_mesh defaults to Explicit in this jax version): jit propagates the
  batch sharding itself, the usual data-parallel behaviour.
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def global_batch(x: np.ndarray, mesh: Mesh, axis_name: str = "data") -> jax.Array:
  """`x` `[batch, ...]`, which every process holds whole, as one array sharded on its batch
  axis over `mesh`: each process places only the rows of its own devices (several hosts too)."""
  return from_process_rows(x[process_rows(len(x), mesh, axis_name)], len(x), mesh, axis_name)


def process_rows(batch_size: int, mesh: Mesh, axis_name: str = "data") -> slice:
  """The rows of a global `[batch_size, ...]` batch sharded over `mesh[axis_name]` that this
  process's devices hold: what it reads (all rows with one process)."""
  _check_divisible(batch_size, mesh, axis_name)
  sharding = NamedSharding(mesh, PartitionSpec(axis_name))
  spans = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else batch_size)
                  for s in sharding.addressable_devices_indices_map((batch_size,)).values()})
  start, stop = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != stop - start:
    raise ValueError(f"this process's devices hold rows {spans} of the batch, not one block; "
                     "build the mesh with each process's devices next to each other.")
  return slice(start, stop)


def from_process_rows(local: np.ndarray, batch_size: int, mesh: Mesh,
                      axis_name: str = "data") -> jax.Array:
  """The global `[batch_size, ...]` batch from this process's rows `process_rows(...)` of it,
  sharded on the batch axis over `mesh` (each process passes its own rows)."""
  _check_divisible(batch_size, mesh, axis_name)
  return jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec(axis_name)), local, (batch_size, *local.shape[1:]))


def _check_divisible(batch_size: int, mesh: Mesh, axis_name: str) -> None:
  if batch_size % mesh.shape[axis_name]:
    raise ValueError(f"Batch size {batch_size} is not divisible by mesh axis {axis_name!r} of "
                     f"size {mesh.shape[axis_name]}.")
