"""Ctrl-C and SIGTERM in training: a request the loop handles between steps (save, then
stop), SIGTERM turned into KeyboardInterrupt during the start-up, and `Interrupted`, the
interruption that has already been reported in one line.

No JAX here: train.py holds the start-up handler before JAX loads.
"""
from __future__ import annotations

import signal
import threading
from typing import Any


class Interrupted(KeyboardInterrupt):
  """An interruption that has been reported to the user in one `Interrupted...` line (what was
  saved, what to rerun): a program catching it only sets its exit status."""


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
  """From its creation until `end()`, SIGTERM raises KeyboardInterrupt as Ctrl-C does: stopping
  during the start-up (imports, data, init, restore, compilation) then says so in one line
  instead of dying silently with exit 143.

  Nested guards hand over without a gap: train.py holds one from before JAX loads to the
  end, the training loop holds its own until its `StopOnInterrupt` takes over, and each
  restores the handler it found. `active` is true from creation, so an interruption caught
  right after it is still known to be part of the start-up.
  """

  def __init__(self):
    self.active = True
    self._previous = None

  def __enter__(self) -> InterruptOnSigterm:
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
