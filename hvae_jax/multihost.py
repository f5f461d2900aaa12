"""Several processes (hosts) in one run: starting JAX's distributed runtime, checking that
every process was given the same config, agreeing on the step where all stop.

Every process runs the same program on its own devices; JAX connects them through a
coordinator (process 0's address). On TPU pods, SLURM and the like `jax.distributed.initialize()`
finds the coordinator, the process count and this process's id itself; elsewhere (e.g. GPU
hosts started by hand) all three are given explicitly.
"""
from __future__ import annotations

import itertools
import json
import threading
from typing import Callable, Optional

import ml_collections
from absl import flags

# jax is imported where it is used: the scripts check these flags before JAX loads.

_FLAGS = ("coordinator_address", "num_processes", "process_id")


def define_flags() -> None:
  """--distributed and its explicit settings, for the command-line scripts."""
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs); "
                    "it auto-detects the processes on TPU pods, SLURM and the like.")
  flags.DEFINE_string("coordinator_address", None, "With --distributed: process 0's host:port.")
  flags.DEFINE_integer("num_processes", None, "With --distributed: how many processes in all.")
  flags.DEFINE_integer("process_id", None,
                       "With --distributed: this process, 0..num_processes-1.")


def flags_problem() -> Optional[str]:
  """Why the flags of `define_flags` cannot work, as one line (None: fine)."""
  f = flags.FLAGS
  explicit = [f"--{name}" for name in _FLAGS if f[name].value is not None]
  if explicit and not f.distributed:
    return f"{', '.join(explicit)} needs --distributed."
  return initialize_problem(*(f[name].value for name in _FLAGS)) if f.distributed else None


def initialize_from_flags() -> None:
  """Joins the multi-process run if --distributed was given (call `flags_problem` first)."""
  if flags.FLAGS.distributed:
    initialize(*(flags.FLAGS[name].value for name in _FLAGS))


def initialize_problem(coordinator_address: Optional[str], num_processes: Optional[int],
                       process_id: Optional[int]) -> Optional[str]:
  """Why these `jax.distributed.initialize` arguments cannot work, as one line (None: fine).

  None for all three means JAX's auto-detection; given explicitly, all three are needed.
  """
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  if all(v is None for v in given.values()):
    return None
  missing = [k for k, v in given.items() if v is None]
  if missing:
    return (f"{', '.join(missing)} missing: pass all of --coordinator_address, --num_processes "
            "and --process_id, or none of them (auto-detection on TPU pods, SLURM, ...).")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    return (f"--coordinator_address={coordinator_address} is not host:port; pass process 0's "
            "address, e.g. 10.0.0.1:1234.")
  if num_processes < 1:
    return f"--num_processes={num_processes} must be at least 1."
  if not 0 <= process_id < num_processes:
    return (f"--process_id={process_id} must be in 0..{num_processes - 1} "
            f"(--num_processes={num_processes}).")
  return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, heartbeat_timeout_s: int = 100) -> None:
  """`jax.distributed.initialize`, with the arguments given (checked first) or auto-detected.

  A process that dies without a word (SIGKILL, a lost host) stops sending heartbeats; after
  `heartbeat_timeout_s` (JAX's default, 100) the coordinator aborts every other process, so
  none waits forever in a collective.
  """
  problem = initialize_problem(coordinator_address, num_processes, process_id)
  if problem:
    raise ValueError(problem)
  import jax  # pylint: disable=import-outside-toplevel
  # JAX's preemption service catches SIGTERM in C++ for its own sync points, which nothing
  # here polls: a SIGTERM outside training (loading, compiling, evaluate.py) would be
  # swallowed. Off, SIGTERM acts as in one process; training stops via `StopAgreement`.
  jax.config.update("jax_enable_preemption_service", False)
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  except ValueError as e:
    if coordinator_address is not None:
      raise
    raise ValueError(f"--distributed could not detect the processes ({e}); outside TPU pods, "
                     "SLURM and the like pass --coordinator_address, --num_processes and "
                     "--process_id.") from None


# Paths on each host's own disk: these may differ between processes.
LOCAL_KEYS = ("data.data_dir", "compilation_cache_dir")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_same_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first key where some process's config differs from process
  0's. Every process must call it; every process raises, so none waits on the others.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return
  mine = json.dumps(config.to_dict(), sort_keys=True, default=repr).encode()
  # Every process's config, padded to the longest, gathered to every process.
  sizes = multihost_utils.process_allgather(np.array([len(mine)], np.int64), tiled=True)
  padded = np.zeros((int(sizes.max()),), np.uint8)
  padded[:len(mine)] = np.frombuffer(mine, np.uint8)
  everyone = multihost_utils.process_allgather(padded[None], tiled=True)
  configs = [json.loads(bytes(row[:n])) for row, n in zip(everyone, sizes)]
  first = _flat(configs[0])
  for p, other in enumerate(configs[1:], start=1):
    other = _flat(other)
    for key in sorted((set(first) | set(other)) - set(LOCAL_KEYS)):
      if first.get(key, "<unset>") != other.get(key, "<unset>"):
        raise ValueError(f"the processes disagree on the config: {key}={other.get(key, '<unset>')!r} "
                         f"on process {p} but {first.get(key, '<unset>')!r} on process 0; start "
                         "every process with the same config and flags.")


def from_process_0(read: Callable[[], Optional[bytes]]) -> Optional[bytes]:
  """`read()` on process 0 only, its result on every process.

  For files a run reads that may differ between hosts (score caches on each host's own
  disk): every process must act on the same bytes, or some would skip collective work the
  others wait in. Every process must call it at the same point.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return read()
  payload = read() if jax.process_index() == 0 else None
  size = multihost_utils.broadcast_one_to_all(np.int32(-1 if payload is None else len(payload)))
  if int(size) < 0:
    return None
  buf = np.zeros((int(size),), np.uint8)
  if payload is not None:
    buf[:] = np.frombuffer(payload, np.uint8)
  return np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes()


# -- stopping together ----------------------------------------------------------------------

_RUNS = itertools.count()  # every process trains in the same order: the same id for one run
_POLL_MS = 500  # how long the watcher waits for a request before checking training still runs
_ANSWER_MS = 300_000  # a process that gives no step this long after a request is gone or hung


class StopAgreement:
  """Agrees on one step at which every process stops once any of them was asked to (a signal),
  so that all of them take part in the same (collective) checkpoint save.

  A signal may reach one process (`kill`, Ctrl-C) or all at slightly different steps (SLURM):
  stopping each where it is would leave the others waiting in the next step's collectives, or
  saving different steps. The protocol is the one of JAX's own preemption sync manager (TSL),
  here for any signal: the asked process sets a request key in jax.distributed's key-value
  store; a watcher thread in every process waits for that key, then publishes the last step
  boundary its training loop passed, and reads every process's; all stop at the largest plus
  one. The watchers, not the loops, exchange the steps: a loop may be blocked in a step that
  waits on another process's next step, so an exchange inside the loop (a barrier, an
  allgather) could deadlock. A loop goes at most one boundary past the step it published (it
  waits there for the answer), so no loop is past the agreed step. A process that leaves the
  loop (done, or an error) publishes its last step too, so a late request still gets every
  answer. The loop itself only takes a lock per step: no host sync, no RPC, and nothing at all
  with one process.
  """

  def __init__(self, step: int):
    import jax  # pylint: disable=import-outside-toplevel
    self._me, self._n = jax.process_index(), jax.process_count()
    self._prefix = f"hvae_jax/stop/{next(_RUNS)}"
    self._cond = threading.Condition()
    self._done = step  # the last step boundary the loop passed
    self._published: Optional[int] = None
    self._stop_at: Optional[int] = None
    self._error: Optional[str] = None
    self._asked = False
    self._closing = threading.Event()
    self._watcher: Optional[threading.Thread] = None
    if self._n > 1:
      self._watcher = threading.Thread(target=self._watch, daemon=True, name="stop-agreement")
      self._watcher.start()

  def should_stop(self, done: int, requested: bool) -> bool:
    """At the boundary after step `done`: whether to save and stop here. `requested`: this
    process was asked to stop. Raises TimeoutError (an OSError: train.py's one error line)
    if a process gave no step in time."""
    if self._watcher is None:
      return requested
    if requested and not self._asked:
      self._asked = True  # several may ask at once: the first request serves them all
      _client().key_value_set(f"{self._prefix}/request", str(self._me), allow_overwrite=True)
    with self._cond:
      self._done = done
      while (self._published is not None and done > self._published and self._stop_at is None
             and self._error is None):
        self._cond.wait()
      if self._error is not None and self._stop_at is None:
        raise TimeoutError(self._error)
      return self._stop_at is not None and done >= self._stop_at

  def close(self) -> None:
    """After the loop: publishes its last step (for a request still to come), ends the watcher."""
    if self._watcher is None:
      return
    self._closing.set()
    try:
      self._publish()
    except Exception:  # pylint: disable=broad-except
      pass  # the coordinator is gone: nobody can be waiting for this step
    # Within a poll once no request came; a watcher still waiting for a lost process's step
    # is left behind (a daemon): this process needs no answer any more.
    self._watcher.join(timeout=2 * _POLL_MS / 1000)

  def _publish(self) -> None:
    with self._cond:
      if self._published is not None:
        return
      self._published = self._done
    _client().key_value_set(f"{self._prefix}/step/{self._me}", str(self._published))

  def _watch(self) -> None:
    client = _client()
    while True:
      try:
        client.blocking_key_value_get(f"{self._prefix}/request", _POLL_MS)
        break
      except Exception as e:  # pylint: disable=broad-except
        if self._closing.is_set() or "DEADLINE_EXCEEDED" not in str(e):
          return  # training is over, or the coordinator is gone (training fails on its own)
    try:
      self._publish()
      steps = [int(client.blocking_key_value_get(f"{self._prefix}/step/{p}", _ANSWER_MS))
               for p in range(self._n)]
      with self._cond:
        self._stop_at = max(steps) + 1
        self._cond.notify_all()
    except Exception as e:  # pylint: disable=broad-except
      with self._cond:
        self._error = (f"a process gave no step to stop at within {_ANSWER_MS // 1000} s of a "
                       f"stop request ({str(e).splitlines()[0]}); it was lost or hangs.")
        self._cond.notify_all()


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client
