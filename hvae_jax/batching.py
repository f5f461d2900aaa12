"""Cutting image arrays into batches: the training stream and every evaluation pass.

Training reads `Batches`: shuffled, fixed-size, a pure function of (seed, epoch, index), so a
resumed run sees the batches an uninterrupted one would.

Every evaluation pass is one loop, `map_batches`: fixed-size batches, a key per batch,
outputs cut, each batch split over every device. Scoring, the competing scores and test
bits/dim during training all run a jitted `fn(params, x_batch, key)` over N examples. Every
batch has the same size (the last one is padded by repeating its final example, the
padding's outputs dropped), so one compiled shape serves any N; the batch starting at
example `i` gets `fold_in(key, i)`, so a result does not depend on how the examples were
split into calls. The paper's scores instead pass per-image key data beside the images
(`image_keys`) and no batch key, so an image's scores do not depend on its position either.

Data parallel as training is: the batch is sharded over the 'data' axis of a device `Mesh`
(all devices of all processes by default), the parameters replicated, and XLA runs `fn` on
every device at once. Random draws do not depend on the sharding (JAX's partitionable
threefry), so the scores equal a one-device run's up to float rounding. In a multi-process
run every process holds the same images and calls this with the same arguments; each
contributes its devices' rows and gets every example's outputs back.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from hvae_jax import sharding


class Batches:
  """Deterministic training minibatches `[batch_size, ...]` of an array `[N, ...]` (usually
  uint8 `[N, H, W, C]`); the N % batch_size examples an epoch's order leaves over are skipped
  in that epoch.

  The order of epoch e is a permutation drawn from `numpy.random.default_rng([seed, e])`
  (identity if `shuffle=False`), so any batch is a pure function of (seed, epoch, index): a
  run resumed at global step s (`iterate(s)`) sees exactly the batches it would have seen.

  `rows` (a slice of `range(batch_size)`) reads only those rows of every batch: a process's
  share of each global batch in a multi-process run (`sharding.process_rows`).
  """

  def __init__(self, images: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0,
               rows: slice = slice(None)):
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}.")
    self.rows = rows
    self.images = images
    self.batch_size = int(batch_size)
    self.shuffle = bool(shuffle)
    self.seed = int(seed)
    self.num_examples = len(images)
    self.num_batches = self.num_examples // self.batch_size
    if self.num_batches == 0:
      raise ValueError(f"No batches: {self.num_examples} examples, fewer than one batch of "
                       f"{batch_size}.")

  def __len__(self) -> int:
    return self.num_batches

  def order(self, epoch: int) -> np.ndarray:
    """`[N]` example indices in the order of `epoch`."""
    if not self.shuffle:
      return np.arange(self.num_examples)
    return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

  def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
    """The batches of one epoch, from batch index `start` on."""
    order = self.order(epoch)
    for i in range(start, self.num_batches):
      yield self.images[order[i * self.batch_size:(i + 1) * self.batch_size][self.rows]]

  def iterate(self, start_step: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """`(step, batch)` forever from global step `start_step`; epoch = step // num_batches."""
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}.")
    epoch, i = divmod(int(start_step), self.num_batches)
    step = int(start_step)
    while True:
      for batch in self.epoch_batches(epoch, start=i):
        yield step, batch
        step += 1
      epoch, i = epoch + 1, 0

  def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
    """Same as `iterate(0)`."""
    return self.iterate(0)


def device_batch_size(batch_size: int, n: int, mesh: Mesh) -> int:
  """The batch size used for `n` examples: at most `batch_size` (and `n`), rounded up to a
  multiple of the mesh's device count so the batch splits evenly."""
  per = -(-max(1, min(int(batch_size), n)) // mesh.size)
  return per * mesh.size


def map_batches(fn: Callable[..., Any], params: Any, x: Any, batch_size: int,
                key: Optional[jax.Array], *, mesh: Optional[Mesh] = None,
                progress: bool = False, desc: str = "", done: Any = None,
                on_batch: Optional[Callable[[Any], None]] = None) -> Any:
  """`fn` over `x` `[N, ...]` in batches of `device_batch_size(batch_size, N, mesh)`; the
  outputs' leading axes, `[batch, ...]` per call, concatenated to `[N, ...]` numpy arrays
  (same pytree as `fn`'s). `x` may be a pytree of `[N, ...]` arrays (e.g. images and their
  per-image key data), batched together. `fn(params, x_batch, batch_key)`, or
  `fn(params, x_batch)` when `key` is None (the caller's randomness is per example).

  `mesh` defaults to every device (`sharding.make_data_mesh()`). A tqdm bar counts examples
  when `progress` is set. `N = 0` returns None.

  `done` continues an interrupted pass: the outputs of a pass with the same `fn`, params, key
  and batch size over the first `n0` examples, `n0` a multiple of the batch size. The pass
  starts at `n0` with the keys one whole pass gives those batches, so it returns what one
  whole pass returns. `on_batch(outputs_so_far)` runs after every batch (to keep them for
  such a resume).
  """
  n = len(jax.tree_util.tree_leaves(x)[0])
  if n == 0:
    return None
  mesh = mesh if mesh is not None else sharding.make_data_mesh()
  bs = device_batch_size(batch_size, n, mesh)
  params = jax.device_put(params, NamedSharding(mesh, P()))  # replicated, moved once
  parts = [] if done is None else [done]
  n0 = 0 if done is None else len(jax.tree_util.tree_leaves(done)[0])
  if n0 % bs or n0 > n:
    raise ValueError(f"cannot continue a pass at example {n0} of {n} in batches of {bs}: "
                     "it must be a multiple of the batch size, at most N.")
  concat = lambda parts: jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
  with tqdm(total=n, initial=n0, desc=desc, unit="img", disable=not progress,
            dynamic_ncols=True) as bar:
    for i in range(n0, n, bs):
      m = min(bs, n - i)
      # One compiled shape: pad with the last example, drop its outputs below.
      xb = jax.tree_util.tree_map(lambda a: sharding.global_batch(
          np.concatenate([a[i:i + m], np.repeat(a[i + m - 1:i + m], bs - m, 0)]), mesh), x)
      out = fn(params, xb) if key is None else fn(params, xb, jax.random.fold_in(key, i))
      out = multihost_utils.process_allgather(out, tiled=True)  # every example, every process
      parts.append(jax.tree_util.tree_map(lambda a, m=m: np.asarray(a)[:m], out))
      bar.update(m)
      if on_batch is not None:
        parts = [concat(parts)]  # one running array per output: what on_batch gets
        on_batch(parts[0])
  return concat(parts)
