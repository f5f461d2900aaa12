"""Tests of hvae_jax.batching's training batches (`map_batches`: tests/integration/test_parallel_scoring.py)."""
from __future__ import annotations

import pytest

from hvae_jax import batching
from tests.helpers import ids, indexed_images


def test_batches_drop_remainder_and_shuffle():
  x = indexed_images(10)
  b = batching.Batches(x, 3, shuffle=True, seed=0)
  assert b.num_batches == len(b) == 3
  e0 = [ids(y) for y in b.epoch_batches(0)]
  assert all(len(y) == 3 for y in e0)
  flat = sum(e0, [])
  assert len(set(flat)) == 9 and set(flat) <= set(range(10))
  assert e0 == [ids(y) for y in batching.Batches(x, 3, shuffle=True, seed=0).epoch_batches(0)]
  assert e0 != [ids(y) for y in b.epoch_batches(1)]
  assert e0 != [ids(y) for y in batching.Batches(x, 3, shuffle=True, seed=1).epoch_batches(0)]
  assert flat != list(range(9))


def test_batches_no_shuffle():
  b = batching.Batches(indexed_images(10), 4, shuffle=False)
  got = [ids(y) for y in b.epoch_batches(3)]
  assert got == [[0, 1, 2, 3], [4, 5, 6, 7]] and b.num_batches == 2


def test_batches_bad_arguments():
  with pytest.raises(ValueError):
    batching.Batches(indexed_images(3), 4, shuffle=False)
  with pytest.raises(ValueError):
    batching.Batches(indexed_images(3), 0, shuffle=False)


def test_batches_resume():
  b = batching.Batches(indexed_images(11), 3, shuffle=True, seed=5)  # 3 batches per epoch
  run = []
  for step, y in b.iterate(0):
    run.append((step, ids(y)))
    if step == 9:
      break
  assert [s for s, _ in run] == list(range(10))
  assert [i for _, i in run[3:6]] == [ids(y) for y in b.epoch_batches(1)]
  for start in (0, 2, 3, 7):
    # A fresh object, as on restart.
    resumed = batching.Batches(indexed_images(11), 3, shuffle=True, seed=5)
    it = resumed.iterate(start)
    got = [(s, ids(y)) for s, y in (next(it) for _ in range(10 - start))]
    assert got == run[start:]
