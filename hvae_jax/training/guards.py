"""What stops a run cleanly on a non-finite loss or gradient (signals: hvae_jax.interrupts)."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); the message says what to do."""


@jax.jit
def _tally_nonfinite(tally: Array, finite: Array, step: Array) -> Array:
  """`tally` = [non-finite steps, the first of them or -1], updated on the device."""
  bad = jnp.logical_not(finite)
  return jnp.stack([tally[0] + bad.astype(jnp.int32),
                    jnp.where(bad & (tally[1] < 0), step, tally[1])])


class NonFiniteSteps:
  """Counts steps with a non-finite loss or gradient without a host sync per step.

  `check` reads the count where the loop syncs anyway (logging, evaluation, saving), so with
  nan_policy='stop' training stops up to log_every_steps late, but never logs, evaluates or
  saves on top of a non-finite step it has not looked at; the skipped updates were not applied.
  """

  def __init__(self, policy: str, workdir: str):
    self._policy, self._workdir = policy, workdir
    self._reset()

  def _reset(self) -> None:
    self._tally = jnp.array([0, -1], jnp.int32)

  def add(self, finite: Array, step: int) -> None:
    self._tally = _tally_nonfinite(self._tally, finite, step)

  def check(self, done: int, last_saved: Optional[int]) -> None:
    """Raises TrainingError ('stop') or reports and resets ('skip') if any step went bad."""
    # The tally is replicated: this host's copy is the whole of it (also with several hosts).
    count, first = (int(v) for v in np.asarray(self._tally.addressable_data(0)))
    if count == 0:
      return
    more = f" ({count} such steps by step {done - 1})" if count > 1 else ""
    what = f"non-finite loss or gradient at step {first}{more}"
    if self._policy == "stop":
      saved = (f"the last good checkpoint in {self._workdir} is step {last_saved}"
               if last_saved is not None else f"no checkpoint was saved in {self._workdir}")
      raise TrainingError(f"Stopped: {what}. No non-finite update was applied; {saved}. Lower "
                          "train.learning_rate, set train.grad_clip, or use "
                          "train.nan_policy='skip'.")
    print(f"Skipped the update: {what}.")
    self._reset()
