"""Training: state, the data-parallel train step, evaluation and the resumable loop.

Data parallelism uses `jax.jit` with a device `Mesh` and `NamedSharding`, the approach
current JAX recommends over `pmap`: parameters are replicated, the batch is split along the
mesh's 'data' axis, and XLA inserts the gradient all-reduce itself. The same code runs on one
CPU, several GPUs, a TPU slice, and several hosts (after `jax.distributed.initialize()`).
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hvae_jax import checkpoints, config as config_lib, data, objectives, plots
from hvae_jax.models import build_model

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
  key = jax.random.key(config.seed)
  params = jax.jit(model.init)(key, x_init, key)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
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


def make_eval_fn(model) -> Callable[[Any, Array, Array], Array]:
  """jitted `(params, x, key) -> [batch]` one-sample ELBO in nats (beta = 1, no free bits)."""
  return jax.jit(lambda params, x, key: objectives.bound(model.apply({"params": params}, x, key)))


def eval_images(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
  """Evaluation input: binarized once with a fixed seed (reproducible), or uint8 as is."""
  return data.eval_binarize(images, seed) if kind == "binary" else images


def evaluate_bpd(eval_fn, params, images: np.ndarray, batch_size: int, key: Array) -> float:
  """Mean test bits/dim over `images` (model-ready), batched; the last batch is padded."""
  total, n = 0.0, images.shape[0]
  for i in range(0, n, batch_size):
    x = images[i:i + batch_size]
    m = x.shape[0]
    if m < batch_size:  # one compiled shape: pad and ignore the padding
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - m, 0)])
    elbo = np.asarray(eval_fn(params, x, jax.random.fold_in(key, i)))[:m]
    total += float(elbo.sum())
  return float(objectives.bits_per_dim(total / n, images.shape[1:]))


class MetricWriter:
  """Metrics to a JSON-lines file and TensorBoard event files in the workdir (host 0 only)."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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


def _scalars(metrics: dict) -> dict[str, float]:
  out = {}
  for k, v in metrics.items():
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
  return data.load_images(name or config.data.name, split, config.data.data_dir or None,
                          config.data.source)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one."""
  config_lib.validate(config)
  enable_compilation_cache(config.compilation_cache_dir)
  os.makedirs(workdir, exist_ok=True)
  t = config.train
  spec = data.DATASETS[config.data.name]
  kind = spec.kind
  train_images = load_dataset(config, config.data.train_split)
  test_images = load_dataset(config, config.data.test_split)
  image_shape = train_images.shape[1:]
  if t.eval_examples > 0:
    test_images = test_images[:t.eval_examples]
  test_x = eval_images(test_images, kind, config.data.eval_binarize_seed)

  n_dev = jax.device_count()
  if t.batch_size % n_dev:
    raise ValueError(f"train.batch_size={t.batch_size} must be divisible by the {n_dev} devices; "
                     f"use a multiple of {n_dev}.")
  batches = data.Batches(train_images, t.batch_size, shuffle=True, seed=config.seed)
  steps_per_epoch = batches.num_batches
  total_steps = t.max_steps if t.max_steps > 0 else int(t.epochs * steps_per_epoch)
  eval_every = max(1, int(round(t.eval_every_epochs * steps_per_epoch)))

  model = build_model(config, image_shape)
  init_images = train_images[np.random.default_rng(config.seed).permutation(len(train_images))[:256]]
  state = init_state(model, config, eval_images(init_images, kind, config.seed))
  metadata = checkpoint_metadata(config, image_shape, kind)
  ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(target=state)
    print(f"Resumed from step {int(state.step)} in {workdir}")
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(metadata, f, indent=1)

  mesh = data.make_data_mesh()
  state = jax.device_put(state, NamedSharding(mesh, P()))
  train_step = make_data_parallel(make_train_step(model, config, steps_per_epoch, kind), mesh)
  eval_fn = make_eval_fn(model)
  sample_fn = jax.jit(functools.partial(model.apply, method=model.sample), static_argnums=2)
  root_key = jax.random.key(config.seed + 1)
  eval_key = jax.random.key(config.seed + 2)
  writer = MetricWriter(workdir)

  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  start = int(state.step)
  bar = tqdm(total=total_steps, initial=start, desc="train", unit="step",
             disable=jax.process_index() != 0, dynamic_ncols=True)
  last_good = start
  t0, seen = time.time(), 0
  try:
    for step, batch in batches.iterate(start):
      if step >= total_steps:
        break
      batch = data.shard_to_mesh(batch, mesh)
      state, metrics = train_step(state, batch, root_key)
      seen += t.batch_size
      done = step + 1
      if not bool(metrics["finite"]):
        msg = (f"non-finite loss or gradient at step {step} (loss={float(metrics['loss'])}, "
               f"grad_norm={float(metrics['grad_norm'])}).")
        if t.nan_policy == "stop":
          raise TrainingError(f"Stopped: {msg} The update was not applied; the last good "
                              f"checkpoint in {workdir} is step {last_good}. Lower "
                              f"train.learning_rate, set train.grad_clip, or use "
                              f"train.nan_policy='skip'.")
        print(f"Skipped the update: {msg}")
      if done % t.log_every_steps == 0 or done == total_steps:
        s = _scalars(metrics)
        s["examples_per_s"] = seen / max(time.time() - t0, 1e-9)
        t0, seen = time.time(), 0
        writer.write(done, "train", s)
        bar.set_postfix(loss=f"{s['loss']:.1f}", bpd=f"{s['bpd']:.3f}",
                        kl="/".join(f"{s[k]:.1f}" for k in sorted(s) if k.startswith("kl_")),
                        ex_s=f"{s['examples_per_s']:.0f}")
      bar.update(1)
      if done % eval_every == 0 or done == total_steps:
        bpd = evaluate_bpd(eval_fn, state.params, test_x, config.eval.batch_size, eval_key)
        writer.write(done, "test", {"bpd": bpd, "epoch": done / steps_per_epoch})
        bar.write(f"step {done} (epoch {done / steps_per_epoch:.2f}): test bits/dim {bpd:.4f}")
        if t.sample_grid > 0 and jax.process_index() == 0:
          imgs = np.asarray(sample_fn({"params": state.params}, jax.random.fold_in(eval_key, done),
                                      t.sample_grid))
          plots.image_grid(imgs, os.path.join(workdir, "samples", f"step_{done:08d}.png"))
      if done % t.checkpoint_every_steps == 0 or done == total_steps:
        ckpt.save(done, state, metadata)
        last_good = done
  except KeyboardInterrupt:
    ckpt.save(int(state.step), state, metadata, force=True)
    print(f"Interrupted: saved step {int(state.step)} in {workdir}; rerun the same command to resume.")
    raise
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  return state
