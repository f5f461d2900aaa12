"""The training state and where it comes from: a fresh init, a resumed checkpoint, or the
parameters of another run (`train.init_from`) with a fresh optimizer."""
from __future__ import annotations

from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import NamedSharding

from hvae_jax import checkpoints, layers
from hvae_jax.models import abstract_params

Array = jax.Array


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


def init_state(model: nn.Module, config: ml_collections.ConfigDict, x_init: Array) -> TrainState:
  """Parameters from `config.seed` and a fresh optimizer state.

  `x_init` `[batch, H, W, C]` is model input (binarized or uint8) for the data-dependent
  initialisation of the weight-normed layers; the same seed and batch give the same params.
  """
  k_params, k_sample = _init_keys(config)
  return fresh_state(layers.init_params(model, k_params, x_init, k_sample), config)


def state_shapes(model: nn.Module, config: ml_collections.ConfigDict,
                 x_init: jax.ShapeDtypeStruct) -> TrainState:
  """`init_state`'s shapes and dtypes, traced without running the init."""
  return jax.eval_shape(lambda p: fresh_state(p, config), abstract_params(model, x_init.shape[1:]))


def _init_keys(config: ml_collections.ConfigDict) -> tuple[Array, Array]:
  """One key for the parameters, another for the latent samples the init pass draws."""
  return tuple(jax.random.split(jax.random.key(config.seed)))


def fresh_state(params: Any, config: ml_collections.ConfigDict, step: int = 0) -> TrainState:
  """`params` at `step` with a fresh optimizer state."""
  return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                    opt_state=make_optimizer(config).init(params))


def initial_state(ckpt: checkpoints.Checkpointer, model: nn.Module,
                  config: ml_collections.ConfigDict, x_init: np.ndarray,
                  sharding: NamedSharding) -> TrainState:
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


def checkpoint_metadata(config: ml_collections.ConfigDict, image_shape: Sequence[int],
                        kind: str) -> dict:
  """What a checkpoint saves beside the state: the config, the image shape `[H, W, C]` and the
  data kind ('binary' or 'discrete'), so a loader needs nothing else."""
  return {"config": config.to_dict(), "image_shape": list(image_shape), "kind": kind}
