"""Tests of hvae_jax.sharding: the device mesh and batches placed on it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from hvae_jax import batching, sharding
from tests.helpers import indexed_images


@pytest.fixture(scope="module")
def cpus():
  devs = jax.devices("cpu")
  # Two simulated CPU devices (XLA_FLAGS from conftest / scripts/test.sh): the sharded path must
  # really run, so this is an assertion, not a skip.
  assert len(devs) >= 2, "need XLA_FLAGS=--xla_force_host_platform_device_count=2"
  return devs[:2]


def test_global_batch(cpus):
  mesh = sharding.make_data_mesh(cpus)
  assert mesh.shape["data"] == 2
  x = indexed_images(8)
  y = sharding.global_batch(x, mesh)
  shards = sorted(y.addressable_shards, key=lambda s: s.index[0].start)
  assert len(shards) == 2 and {s.device for s in shards} == set(cpus)
  np.testing.assert_array_equal(np.asarray(shards[0].data), x[:4])
  np.testing.assert_array_equal(np.asarray(shards[1].data), x[4:])
  # A jitted reduction over the sharded batch is correct.
  total = jax.jit(lambda a: a.astype(jnp.int32).sum())(y)
  assert int(total) == int(x.astype(np.int64).sum())
  with pytest.raises(ValueError, match="divisible"):
    sharding.global_batch(indexed_images(5), mesh)


def test_make_data_mesh_default():
  assert sharding.make_data_mesh().shape["data"] == jax.device_count()


def test_process_rows_read_and_placed(cpus):
  """One process holds every row; Batches(rows=...) reads them, from_process_rows places them
  split over the mesh's 'data' axis (the multi-process split itself: tests/integration/test_multiprocess.py)."""
  mesh = sharding.make_data_mesh(cpus)
  rows = sharding.process_rows(8, mesh)
  assert rows == slice(0, 8)
  x = indexed_images(20)
  whole = batching.Batches(x, 8, shuffle=True, seed=3)
  part = batching.Batches(x, 8, shuffle=True, seed=3, rows=slice(2, 6))
  for (s, a), (t, b) in zip(whole.iterate(1), part.iterate(1)):
    assert s == t and np.array_equal(a[2:6], b)
    if s == 4:
      break
  y = sharding.from_process_rows(x[:8], 8, mesh)
  assert y.sharding == NamedSharding(mesh, PartitionSpec("data"))
  np.testing.assert_array_equal(np.asarray(y), x[:8])
  with pytest.raises(ValueError, match="divisible"):
    sharding.from_process_rows(x[:5], 5, mesh)
