"""What stops a run cleanly: a non-finite loss or gradient, Ctrl-C or SIGTERM."""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional

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


class StopOnInterrupt:
  """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request the loop handles between steps
  (save, then stop).

  SIGTERM is what schedulers and preemptible machines send before they kill a job (SLURM,
  Kubernetes, spot/preemptible VMs), and what `kill` sends by default: the run saves the step
  it finished and a rerun resumes from there. The train step donates its input state, so an
  exception raised between the step's return and the assignment of its result would leave no
  valid state to save; a flag set by the signal handler cannot. A second signal of the same
  kind acts as usual at once (no save). Only the main thread receives signals, and an ignored
  SIGINT (e.g. a job started with `&` from a script) stays ignored.
  """

  def __init__(self):
    self.requested = False
    self._previous: dict = {}

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    signal.signal(signum, self._previous[signum])  # no printing here: it may interrupt a print

  def __enter__(self) -> StopOnInterrupt:
    if threading.current_thread() is not threading.main_thread():
      return self
    for signum, default in ((signal.SIGINT, signal.default_int_handler),
                            (signal.SIGTERM, signal.SIG_DFL)):
      previous = signal.getsignal(signum)
      if previous is not signal.SIG_IGN:
        self._previous[signum] = previous if previous is not None else default
        signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info: Any) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


class InterruptOnSigterm:
  """Until `end()` (the start of the training loop, whose `StopOnInterrupt` takes over),
  SIGTERM raises KeyboardInterrupt as Ctrl-C does: stopping during the start-up (data, init,
  restore, compilation) then says so in one line instead of dying silently with exit 143."""

  def __init__(self):
    self.active = False
    self._previous = None

  def __enter__(self) -> InterruptOnSigterm:
    self.active = True
    if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN):
      self._previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    return self

  def end(self) -> None:
    """The start-up is over: SIGTERM is handled as before."""
    self.active = False
    self.__exit__()

  def __exit__(self, *exc_info: Any) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
