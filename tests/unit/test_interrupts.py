"""The start-up guard and its hand-over: SIGTERM never meets the default disposition (a silent
exit 143) while nested guards pass it on, and a reported interruption is a KeyboardInterrupt."""
import os
import signal

import pytest

from hvae_jax.interrupts import InterruptOnSigterm, Interrupted, StopOnInterrupt


def _sigterm():
  os.kill(os.getpid(), signal.SIGTERM)


def test_guard_turns_sigterm_into_keyboard_interrupt_and_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(KeyboardInterrupt):
    with InterruptOnSigterm() as guard:
      assert guard.active
      _sigterm()
  assert signal.getsignal(signal.SIGTERM) is before


def test_inner_guard_ending_hands_sigterm_back_to_the_outer_one():
  """train.py's guard around the loop's: when the loop ends its own (its StopOnInterrupt takes
  over) and that ends too, SIGTERM still raises rather than kill."""
  with InterruptOnSigterm():
    inner = InterruptOnSigterm()
    with inner:
      inner.end()
      assert not inner.active
      with StopOnInterrupt() as stop:
        _sigterm()
        assert stop.requested  # the first one is a request, handled between steps
        with pytest.raises(KeyboardInterrupt):
          _sigterm()  # a second one acts as the handler found: the outer guard's
      with pytest.raises(KeyboardInterrupt):
        _sigterm()


def test_interrupted_is_a_keyboard_interrupt():
  with pytest.raises(KeyboardInterrupt):
    raise Interrupted
