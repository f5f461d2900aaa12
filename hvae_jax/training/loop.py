"""The resumable training loop: data, state, compiled step, then log, evaluate, sample and
save as the config says, stopping cleanly on a signal or a non-finite step."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from hvae_jax import (batching, checkpoints, config as config_lib, data, host_memory, multihost,
                      plots, preprocess, sharding)
from hvae_jax.compilation_cache import enable_compilation_cache
from hvae_jax.interrupts import InterruptOnSigterm, Interrupted, StopOnInterrupt
from hvae_jax.models import build_model
from hvae_jax.training.guards import NonFiniteSteps, TrainingError
from hvae_jax.training.metric_log import MetricWriter, read_scalars
from hvae_jax.training.state import TrainState, checkpoint_metadata, initial_state
from hvae_jax.training.step import (compile_train_step, evaluate_bpd, make_data_parallel,
                                   make_eval_fn, make_train_step)


def _make_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create the workdir {workdir}: {e.strerror or e}; pass a new or "
                     "existing directory.") from None


def load_dataset(config: ml_collections.ConfigDict, split: str,
                 name: Optional[str] = None) -> np.ndarray:
  """The uint8 images `[N, H, W, C]` of `split` of the config's data set (or `name`), a
  folder:, npz: or tfds: set brought to the config's image shape (`data.config_spec`)."""
  try:
    return data.load_images(name or config.data.name, split, config.data.data_dir or None,
                            config.data.source, image_shape=data.config_spec(config).image_shape)
  except RuntimeError as e:  # tfds could not get the data (offline, ...): the message says why
    raise TrainingError(str(e)) from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest intact checkpoint if there is one.

  Ctrl-C or SIGTERM saves the last completed step and stops; a second one quits without
  saving; during the start-up they stop at once, with nothing to save. Each way prints one
  `Interrupted...` line and raises `interrupts.Interrupted` (a KeyboardInterrupt). With several
  processes (after `jax.distributed.initialize()`) every one calls this with the same config and
  a shared `workdir`; each reads only its rows of every global batch, and process 0 alone writes
  the logs, samples and config.json. A signal to any of them during training stops all at one
  agreed step (`multihost.StopAgreement`), each saying so.
  """
  startup = InterruptOnSigterm()
  try:
    with startup:
      return _train_and_evaluate(config, workdir, startup)
  except Interrupted:
    raise
  except KeyboardInterrupt as err:
    if startup.active:
      print(f"Interrupted during start-up, before the first training step: nothing to save; "
            f"rerun the same command to start (or resume) in {workdir}.", flush=True)
    else:  # after the last step, while the final save and the logs were being finished
      print(f"Interrupted after the last step, while finishing the final save and logs: rerun "
            f"the same command; it resumes from the newest intact checkpoint in {workdir}.",
            flush=True)
    raise Interrupted from err


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        startup: InterruptOnSigterm) -> TrainState:
  config_lib.validate(config)
  t = config.train
  n_dev = jax.device_count()
  if t.batch_size % n_dev:
    raise ValueError(f"train.batch_size={t.batch_size} must be divisible by the {n_dev} devices; "
                     f"use a multiple of {n_dev}.")
  multihost.check_same_config(config)
  _make_workdir(workdir)
  enable_compilation_cache(config.compilation_cache_dir)
  spec = data.config_spec(config)
  kind = spec.kind
  train_images = load_dataset(config, config.data.train_split)
  test_images = load_dataset(config, config.data.test_split)
  image_shape = train_images.shape[1:]
  if t.eval_examples > 0:
    test_images = test_images[:t.eval_examples]
  test_x = preprocess.eval_input(test_images, kind, config.data.eval_binarize_seed)

  mesh = sharding.make_data_mesh()
  # Every process computes the same global order (seed, step) and reads only its own rows.
  batches = batching.Batches(train_images, t.batch_size, shuffle=True, seed=config.seed,
                             rows=sharding.process_rows(t.batch_size, mesh))
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

  with contextlib.ExitStack() as cleanup:  # unwinds last to first: stop agreement, bar,
    # writer, wait, close
    ckpt = cleanup.enter_context(checkpoints.Checkpointer(
        os.path.join(workdir, checkpoints.CHECKPOINT_SUBDIR), t.keep_checkpoints))
    cleanup.callback(ckpt.wait)  # every started save is on disk, or its error raised
    state = initial_state(ckpt, model, config,
                          preprocess.eval_input(init_images, kind, config.seed),
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
    nonfinite = NonFiniteSteps(t.nan_policy, workdir)
    t0, seen = time.time(), 0
    saved_on_interrupt = False
    # Every process stops at the same step, whichever of them got the signal.
    agreement = multihost.StopAgreement(start)
    cleanup.callback(agreement.close)
    startup.end()
    try:
      with StopOnInterrupt() as interrupt:
        for step, batch in batches.iterate(start):
          if step >= total_steps:
            break
          state, metrics = train_step(
              state, sharding.from_process_rows(batch, t.batch_size, mesh), root_key)
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
            s = read_scalars(metrics)
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
            raise Interrupted
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
    except KeyboardInterrupt as err:
      if saved_on_interrupt:
        raise
      saved = f"step {last_saved}" if last_saved is not None else "none"
      bar.write(f"Interrupted: quit without saving; the last checkpoint in {workdir} is "
                f"{saved}.")
      raise Interrupted from err
  return state
