"""Training: state, the data-parallel train step, evaluation and the resumable loop.

Data parallelism uses `jax.jit` with a device `Mesh` and `NamedSharding`, the approach
current JAX recommends over `pmap`: parameters are replicated, the batch is split along the
mesh's 'data' axis, and XLA inserts the gradient all-reduce itself. The same code runs on one
CPU, several GPUs, a TPU slice, and several hosts (after `jax.distributed.initialize()`).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hvae_jax import (batching, checkpoints, config as config_lib, data, host_memory, layers,
                      multihost, objectives, plots)
from hvae_jax.models import abstract_params, build_model

Array = jax.Array


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); the message says what to do."""


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  tx = optax.adam(config.train.learning_rate)
  if config.train.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.train.grad_clip), tx)
  return tx


def init_state(model, config: ml_collections.ConfigDict, x_init: Array) -> TrainState:
  """Parameters from `config.seed` and a fresh optimizer state.

  `x_init` `[batch, H, W, C]` is model input (binarized or uint8) for the data-dependent
  initialisation of the weight-normed layers; the same seed and batch give the same params.
  """
  k_params, k_sample = _init_keys(config)
  return fresh_state(layers.init_params(model, k_params, x_init, k_sample), config)


def state_shapes(model, config: ml_collections.ConfigDict, x_init: jax.ShapeDtypeStruct) -> TrainState:
  """`init_state`'s shapes and dtypes, traced without running the init."""
  return jax.eval_shape(lambda p: fresh_state(p, config), abstract_params(model, x_init.shape[1:]))


def _init_keys(config: ml_collections.ConfigDict) -> tuple[Array, Array]:
  """One key for the parameters, another for the latent samples the init pass draws."""
  return tuple(jax.random.split(jax.random.key(config.seed)))


def fresh_state(params: Any, config: ml_collections.ConfigDict, step: int = 0) -> TrainState:
  """`params` at `step` with a fresh optimizer state."""
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    opt_state=make_optimizer(config).init(params))


def model_input(batch: Array, kind: str, key: Array) -> Array:
  """Training input: a fresh binarization per step for greyscale, uint8 as is for colour."""
  return data.preprocess(batch, kind, key) if kind == "binary" else batch


def make_train_step(model, config: ml_collections.ConfigDict, steps_per_epoch: int,
                    kind: str) -> Callable[[TrainState, Array, Array], tuple[TrainState, dict]]:
  """The (unjitted) train step `(state, batch_uint8, root_key) -> (state, metrics)`.

  Each step's randomness is `fold_in(root_key, step)`, so a resumed run draws exactly what an
  uninterrupted one would. A non-finite loss or gradient leaves the state unchanged and
  reports `finite=False`; the loop then stops or skips as `train.nan_policy` says.
  """
  tx = make_optimizer(config)
  t = config.train

  def step_fn(state: TrainState, batch: Array, root_key: Array):
    key = jax.random.fold_in(root_key, state.step)
    k_bin, k_model = jax.random.split(key)
    if config.data.perturb_rate > 0:  # background model: fresh noise every step (Ren et al.)
      batch = data.perturb(jax.random.fold_in(key, 2), batch, config.data.perturb_rate)
    x = model_input(batch, kind, k_bin)
    epoch = state.step / steps_per_epoch
    beta = objectives.kl_warmup(epoch, t.warmup_epochs)
    budget = objectives.free_bits_budget(epoch, t.free_bits, t.free_bits_epochs)

    def loss_fn(params):
      out = model.apply({"params": params}, x, k_model)
      return objectives.training_loss(out, beta, budget)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state))
    metrics.update(beta=beta, free_bits=budget, grad_norm=grad_norm, finite=finite,
                   bpd=objectives.bits_per_dim(metrics["elbo"], x.shape[1:]))
    return new_state, metrics

  return step_fn


def make_data_parallel(step_fn: Callable, mesh: Mesh) -> Callable:
  """jit `step_fn(state, batch, key)` with the batch sharded over `mesh`'s 'data' axis."""
  replicated = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P("data"))
  return jax.jit(step_fn, in_shardings=(replicated, sharded, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def compile_train_step(train_step: Callable, state: TrainState, batch: Any, key: Array) -> Callable:
  """The compiled `train_step` (from `make_data_parallel`) for `batch`'s shape and sharding
  (an array or a `jax.ShapeDtypeStruct`), with the freed heap of the init pass and the compiler
  handed back to the OS before the step's own buffers exist: the process then peaks at its
  largest phase, not at their sum (host_memory)."""
  compiled = train_step.lower(state, batch, key).compile()
  host_memory.release_freed()
  return compiled


def make_eval_fn(model) -> Callable[[Any, Array, Array], Array]:
  """jitted `(params, x, key) -> [batch]` one-sample ELBO in nats (beta = 1, no free bits)."""
  return jax.jit(lambda params, x, key: objectives.bound(model.apply({"params": params}, x, key)))


def eval_images(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
  """Evaluation input: binarized once with a fixed seed (reproducible), or uint8 as is."""
  return data.eval_binarize(images, seed) if kind == "binary" else images


def evaluate_bpd(eval_fn, params, images: np.ndarray, batch_size: int, key: Array) -> float:
  """Mean test bits/dim over `images` (model-ready), in device-parallel batches
  (`batching.map_batches`)."""
  elbo = batching.map_batches(eval_fn, params, images, batch_size, key)
  return float(objectives.bits_per_dim(float(np.sum(elbo, dtype=np.float64)) / len(images),
                                       images.shape[1:]))


class MetricWriter:
  """Metrics to a JSON-lines file and TensorBoard event files in the workdir (host 0 only).

  A run resumed at step `start` replays the steps after it, whose rows a killed run may have
  written already: those rows are dropped from metrics.jsonl (and a line cut off by the kill)
  and TensorBoard is told to hide its events from step `start + 1` on, so each step shows once.
  """

  def __init__(self, workdir: str, start: int = 0):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    path = os.path.join(workdir, "metrics.jsonl")
    _keep_rows_up_to(path, start)
    self.jsonl = open(path, "a", encoding="utf-8")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start + 1)

  def write(self, step: int, split: str, scalars: dict[str, float]):
    if not self.active:
      return
    self.jsonl.write(json.dumps({"step": step, "split": split, **scalars}) + "\n")
    self.jsonl.flush()
    for k, v in scalars.items():
      self.tb.add_scalar(f"{split}/{k}", v, step)
    self.tb.flush()

  def close(self):
    if self.active:
      self.jsonl.close()
      self.tb.close()


def _keep_rows_up_to(path: str, step: int) -> None:
  """Rewrites the JSON-lines file `path` (atomically) without its rows of steps after `step`
  and without lines that do not parse; leaves it alone when there is nothing to drop."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):
      pass  # cut off mid-write by a kill
  if kept == lines:
    return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def _scalars(metrics: dict) -> dict[str, float]:
  out = {}
  for k, v in jax.device_get(metrics).items():  # one transfer for all of them
    v = np.asarray(v)
    if v.ndim == 0:
      out[k] = float(v)
    else:
      out.update({f"{k}_{i + 1}": float(x) for i, x in enumerate(v)})
  return out


def enable_compilation_cache(path: str):
  """JAX's persistent compilation cache: a second run with the same shapes skips compiling."""
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def checkpoint_metadata(config: ml_collections.ConfigDict, image_shape, kind: str) -> dict:
  return {"config": config.to_dict(), "image_shape": list(image_shape), "kind": kind}


def load_dataset(config: ml_collections.ConfigDict, split: str, name: Optional[str] = None) -> np.ndarray:
  try:
    return data.load_images(name or config.data.name, split, config.data.data_dir or None,
                            config.data.source)
  except RuntimeError as e:  # tfds could not get the data (offline, ...): the message says why
    raise TrainingError(str(e)) from e


@jax.jit
def _tally_nonfinite(tally: Array, finite: Array, step: Array) -> Array:
  """`tally` = [non-finite steps, the first of them or -1], updated on the device."""
  bad = jnp.logical_not(finite)
  return jnp.stack([tally[0] + bad.astype(jnp.int32),
                    jnp.where(bad & (tally[1] < 0), step, tally[1])])


class _NonFiniteSteps:
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


class _StopOnInterrupt:
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

  def __enter__(self) -> _StopOnInterrupt:
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


def initial_state(ckpt: checkpoints.Checkpointer, model, config: ml_collections.ConfigDict,
                  x_init: np.ndarray, sharding: NamedSharding) -> TrainState:
  """The newest intact checkpoint in `ckpt`, restored straight into `sharding`; else the
  parameters and step of `config.train.init_from` with a fresh optimizer state; else a fresh init.

  On resume only the shapes of the state are built (`jax.eval_shape`): the data-dependent init
  (minutes for BIVA) would be overwritten anyway. Newer corrupt steps are reported and moved
  aside (`Checkpointer.restore_newest_valid`).
  """
  init_from = config.train.init_from
  if ckpt.latest_step() is None and not init_from:
    return jax.device_put(init_state(model, config, x_init), sharding)
  shapes = state_shapes(model, config, jax.ShapeDtypeStruct(x_init.shape, x_init.dtype))
  if ckpt.latest_step() is None:
    return jax.device_put(warm_start_state(init_from, shapes, config), sharding)
  target = jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
  state, _ = ckpt.restore_newest_valid(target, report=lambda msg: print(f"warning: {msg}"))
  print(f"Resumed from step {int(state.step)} in {ckpt.directory}")
  return state


def warm_start_state(path: str, shapes: TrainState, config: ml_collections.ConfigDict) -> TrainState:
  """The parameters and step saved at `path` (a workdir, step directory or exported model),
  checked against `shapes`, with a fresh optimizer state: the KL warm-up and free-bits
  schedules go on from the saved step while Adam re-estimates its moments."""
  try:
    saved, meta = checkpoints.load_checkpoint_dir(path)
    params = checkpoints.match_params(saved["params"], shapes.params, path, meta)
  except checkpoints.CheckpointError as e:
    raise ValueError(f"train.init_from={path}: {e}") from None
  step = int(saved["step"])
  print(f"Starting from the parameters of {path} (step {step}) with a fresh optimizer state")
  return fresh_state(params, config, step)


def _make_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create the workdir {workdir}: {e.strerror or e}; pass a new or "
                     "existing directory.") from None


class _InterruptOnSigterm:
  """Until `end()` (the start of the training loop, whose `_StopOnInterrupt` takes over),
  SIGTERM raises KeyboardInterrupt as Ctrl-C does: stopping during the start-up (data, init,
  restore, compilation) then says so in one line instead of dying silently with exit 143."""

  def __init__(self):
    self.active = False
    self._previous = None

  def __enter__(self) -> _InterruptOnSigterm:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest intact checkpoint if there is one.

  Ctrl-C or SIGTERM saves the last completed step and stops (KeyboardInterrupt); a second one
  quits without saving; during the start-up they stop at once, with nothing to save. With several
  processes (after `jax.distributed.initialize()`) every one calls this with the same config and
  a shared `workdir`; each reads only its rows of every global batch, and process 0 alone writes
  the logs, samples and config.json. A signal to any of them during training stops all at one
  agreed step (`multihost.StopAgreement`), each saying so.
  """
  startup = _InterruptOnSigterm()
  try:
    with startup:
      return _train_and_evaluate(config, workdir, startup)
  except KeyboardInterrupt:
    if startup.active:
      print(f"Interrupted during start-up, before the first training step: nothing to save; "
            f"rerun the same command to start (or resume) in {workdir}.", flush=True)
    raise


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        startup: _InterruptOnSigterm) -> TrainState:
  config_lib.validate(config)
  t = config.train
  n_dev = jax.device_count()
  if t.batch_size % n_dev:
    raise ValueError(f"train.batch_size={t.batch_size} must be divisible by the {n_dev} devices; "
                     f"use a multiple of {n_dev}.")
  multihost.check_same_config(config)
  _make_workdir(workdir)
  enable_compilation_cache(config.compilation_cache_dir)
  spec = data.DATASETS[config.data.name]
  kind = spec.kind
  train_images = load_dataset(config, config.data.train_split)
  test_images = load_dataset(config, config.data.test_split)
  image_shape = train_images.shape[1:]
  if t.eval_examples > 0:
    test_images = test_images[:t.eval_examples]
  test_x = eval_images(test_images, kind, config.data.eval_binarize_seed)

  mesh = data.make_data_mesh()
  # Every process computes the same global order (seed, step) and reads only its own rows.
  batches = data.Batches(train_images, t.batch_size, shuffle=True, seed=config.seed,
                         rows=data.process_rows(t.batch_size, mesh))
  steps_per_epoch = batches.num_batches
  total_steps = t.max_steps if t.max_steps > 0 else int(t.epochs * steps_per_epoch)
  eval_every = max(1, int(round(t.eval_every_epochs * steps_per_epoch)))

  model = build_model(config, image_shape)
  init_images = train_images[np.random.default_rng(config.seed).permutation(len(train_images))[:256]]
  metadata = checkpoint_metadata(config, image_shape, kind)
  train_step = make_data_parallel(make_train_step(model, config, steps_per_epoch, kind), mesh)
  eval_fn = make_eval_fn(model)
  sample_fn = jax.jit(functools.partial(model.apply, method=model.sample), static_argnums=2)
  root_key = jax.random.key(config.seed + 1)
  eval_key = jax.random.key(config.seed + 2)
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  with contextlib.ExitStack() as cleanup:  # unwinds last to first: stop agreement, bar,
    # writer, wait, close
    ckpt = cleanup.enter_context(checkpoints.Checkpointer(
        os.path.join(workdir, checkpoints.CHECKPOINT_SUBDIR), t.keep_checkpoints))
    cleanup.callback(ckpt.wait)  # every started save is on disk, or its error raised
    state = initial_state(ckpt, model, config, eval_images(init_images, kind, config.seed),
                          NamedSharding(mesh, P()))
    train_step = compile_train_step(
        train_step, state, jax.ShapeDtypeStruct((t.batch_size, *image_shape), train_images.dtype,
                                                sharding=NamedSharding(mesh, P("data"))), root_key)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1)
    start = int(state.step)
    writer = MetricWriter(workdir, start)
    cleanup.callback(writer.close)
    bar = tqdm(total=total_steps, initial=start, desc="train", unit="step",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    cleanup.callback(bar.close)
    last_saved = ckpt.latest_step()
    nonfinite = _NonFiniteSteps(t.nan_policy, workdir)
    t0, seen = time.time(), 0
    saved_on_interrupt = False
    # Every process stops at the same step, whichever of them got the signal.
    agreement = multihost.StopAgreement(start)
    cleanup.callback(agreement.close)
    startup.end()
    try:
      with _StopOnInterrupt() as interrupt:
        for step, batch in batches.iterate(start):
          if step >= total_steps:
            break
          state, metrics = train_step(state, data.from_process_rows(batch, t.batch_size, mesh),
                                      root_key)
          nonfinite.add(metrics["finite"], step)
          seen += t.batch_size
          done = step + 1
          stop_now = agreement.should_stop(done, interrupt.requested)
          log_now = done % t.log_every_steps == 0 or done == total_steps
          eval_now = done % eval_every == 0 or done == total_steps
          save_now = done % t.checkpoint_every_steps == 0 or done == total_steps
          if log_now or eval_now or save_now or stop_now:
            nonfinite.check(done, last_saved)
          if log_now:
            s = _scalars(metrics)
            s["examples_per_s"] = seen / max(time.time() - t0, 1e-9)
            t0, seen = time.time(), 0
            writer.write(done, "train", s)
            bar.set_postfix(loss=f"{s['loss']:.1f}", bpd=f"{s['bpd']:.3f}",
                            kl="/".join(f"{s[k]:.1f}" for k in sorted(s) if k.startswith("kl_")),
                            ex_s=f"{s['examples_per_s']:.0f}")
          bar.update(1)
          if stop_now:
            ckpt.save(done, state, metadata, force=True)
            saved_on_interrupt = True
            bar.write(f"Interrupted: saved step {done} in {workdir}; rerun the same command "
                      "to resume.")
            raise KeyboardInterrupt
          if eval_now:
            bpd = evaluate_bpd(eval_fn, state.params, test_x, config.eval.batch_size, eval_key)
            writer.write(done, "test", {"bpd": bpd, "epoch": done / steps_per_epoch})
            bar.write(f"step {done} (epoch {done / steps_per_epoch:.2f}): test bits/dim {bpd:.4f}")
            if t.sample_grid > 0 and jax.process_index() == 0:
              # On this host's copy of the params: a program over every process's devices
              # would wait for the other processes.
              local = jax.tree_util.tree_map(lambda a: a.addressable_data(0), state.params)
              imgs = np.asarray(sample_fn({"params": local},
                                          jax.random.fold_in(eval_key, done), t.sample_grid))
              plots.image_grid(imgs, os.path.join(workdir, "samples", f"step_{done:08d}.png"))
            host_memory.release_freed()  # the eval and sampling programs' compile heap
          if save_now:
            ckpt.save(done, state, metadata)
            last_saved = done
    except KeyboardInterrupt:
      if not saved_on_interrupt:
        saved = f"step {last_saved}" if last_saved is not None else "none"
        bar.write(f"Interrupted: quit without saving; the last checkpoint in {workdir} is "
                  f"{saved}.")
      raise
  return state
