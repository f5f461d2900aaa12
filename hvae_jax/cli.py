"""What the command-line programs share: absl flag parsing and errors that end in one `error:`
line, and joining a multi-host run from the flags.

No JAX here: the programs import this before their flags are checked, and JAX loads after.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from absl import flags

from hvae_jax import multihost

ErrorKinds = tuple[type[BaseException], ...]


@contextlib.contextmanager
def errors_to_exit(kinds: ErrorKinds, verbose: bool = False) -> Iterator[None]:
  """Turns an exception of `kinds` raised inside into one `error: <message>` line and exit
  status 1 (`SystemExit`); with `verbose` it propagates as is, traceback and all."""
  try:
    yield
  except kinds as e:
    if verbose:
      raise
    raise SystemExit(f"error: {e}") from None


def join_multihost() -> None:
  """Joins the multi-process run that the flags of `multihost.define_flags` describe (none
  without --distributed); flags that cannot work, or no coordinator found or reachable, exit
  with one `error:` line."""
  with errors_to_exit((RuntimeError, ValueError)):
    problem = multihost.flags_problem()
    if problem:
      raise ValueError(problem)
    multihost.initialize_from_flags()


def _flag_error(err: BaseException, argv: list[str]) -> str:
  """One line for a flag-parsing error, naming the flag where it can be told."""
  lines = [line.strip() for line in str(err).splitlines() if line.strip()]
  if not lines:
    return type(err).__name__
  if lines[0].startswith("flag --"):  # absl: 'flag --name=value: problem' (+ a traceback)
    head = lines[0][len("flag "):]
    return head if len(lines) == 1 else f"{head.split(': ', 1)[0]}: {lines[-1]}"
  if isinstance(err, (KeyError, AttributeError)):  # an override of a key the config lacks
    key = lines[0].strip("'\" ")
    given = [a for a in argv if a.startswith("--") and f".{key}" in a.split("=", 1)[0]]
    return f"{given[0] if given else key}: no such config key {key!r}"
  return lines[-1]


def _bad_flag_exit(line: str) -> SystemExit:
  return SystemExit(f"error: bad command-line flag: {line}. Config keys and their defaults "
                    "are in hvae_jax/config.py; see --helpfull for the flags.")


@contextlib.contextmanager
def config_flag_definitions() -> Iterator[None]:
  """Around `config_flags.DEFINE_config_*`: ml_collections reads `--<name>.<key>=` overrides
  from sys.argv while it defines the flag, so an unknown key fails there, before
  `parse_flags_or_exit` runs; it gets the same one `error:` line."""
  try:
    yield
  except (KeyError, AttributeError) as e:
    if "--verbose" in sys.argv:
      raise
    raise _bad_flag_exit(_flag_error(e, sys.argv)) from None


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """absl flag parsing that turns a bad flag, config file or override into one `error:` line.

  Pass as `app.run(main, flags_parser=parse_flags_or_exit)`; with --verbose in argv the
  original exception is raised instead.
  """
  name = None
  try:
    rest = flags.FLAGS(argv)
    # A config file that fails to load raises only when first read: read each flag now.
    for name in flags.FLAGS:
      getattr(getattr(flags.FLAGS, name), "keys", None)
    return rest
  except Exception as e:  # noqa: BLE001 -- a config file is user code: any error is the user's
    if "--verbose" in argv:
      raise
    line = _flag_error(e, argv)
    if isinstance(e, OSError) and name is not None:
      line = f"--{name}: {line}"
    raise _bad_flag_exit(line) from None
