"""The train step, its data-parallel compilation, and the bits/dim evaluation.

Data parallelism uses `jax.jit` with a device `Mesh` and `NamedSharding`, the approach
current JAX recommends over `pmap`: parameters are replicated, the batch is split along the
mesh's 'data' axis, and XLA inserts the gradient all-reduce itself. The same code runs on one
CPU, several GPUs, a TPU slice, and several hosts (after `jax.distributed.initialize()`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hvae_jax import batching, host_memory, objectives, preprocess
from hvae_jax.training.state import TrainState, make_optimizer

Array = jax.Array


def make_train_step(model: nn.Module, config: ml_collections.ConfigDict, steps_per_epoch: int,
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
      batch = preprocess.perturb(jax.random.fold_in(key, 2), batch, config.data.perturb_rate)
    x = preprocess.train_input(batch, kind, k_bin)
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


def make_eval_fn(model: nn.Module) -> Callable[[Any, Array, Array], Array]:
  """jitted `(params, x, key) -> [batch]` one-sample ELBO in nats (beta = 1, no free bits)."""
  return jax.jit(lambda params, x, key: objectives.bound(model.apply({"params": params}, x, key)))


def evaluate_bpd(eval_fn: Callable, params: Any, images: np.ndarray, batch_size: int,
                 key: Array) -> float:
  """Mean test bits/dim over `images` (model-ready), in device-parallel batches
  (`batching.map_batches`)."""
  elbo = batching.map_batches(eval_fn, params, images, batch_size, key)
  return float(objectives.bits_per_dim(float(np.sum(elbo, dtype=np.float64)) / len(images),
                                       images.shape[1:]))
