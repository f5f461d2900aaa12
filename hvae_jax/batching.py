"""One loop for every pass over a data set: fixed-size batches, a key per batch, outputs cut.

Scoring, the competing scores and test bits/dim during training all run a jitted
`fn(params, x_batch, key)` over N examples. Every batch has the same size (the last one is
padded by repeating its final example, the padding's outputs dropped), so one compiled shape
serves any N; batch i starting at example `i` gets `fold_in(key, i)`, so a result does not
depend on how the examples were split into calls.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def map_batches(fn: Callable[[Any, np.ndarray, jax.Array], Any], params: Any, x: np.ndarray,
                batch_size: int, key: jax.Array, *, progress: bool = False,
                desc: str = "") -> Any:
  """`fn` over `x` `[N, ...]` in batches of `min(batch_size, N)`; the outputs' leading axes,
  `[batch, ...]` per call, concatenated to `[N, ...]` numpy arrays (same pytree as `fn`'s).

  A tqdm bar counts examples when `progress` is set. `N = 0` returns None.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  n = len(x)
  if n == 0:
    return None
  bs = max(1, min(int(batch_size), n))
  parts = []
  with tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
    for i in range(0, n, bs):
      xb = x[i:i + bs]
      m = len(xb)
      if m < bs:  # one compiled shape: pad with the last example, drop its outputs below
        xb = np.concatenate([xb, np.repeat(xb[-1:], bs - m, 0)])
      out = fn(params, xb, jax.random.fold_in(key, i))
      parts.append(jax.tree_util.tree_map(lambda a, m=m: np.asarray(a)[:m], out))
      bar.update(m)
  return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
