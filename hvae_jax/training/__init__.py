"""Training: the state, the data-parallel train step, evaluation and the resumable loop.

`train_and_evaluate` is the entry point (train.py, `hvae_jax.train`); the rest is re-exported
for the converter (hvae_jax.port), benchmarks and tests that build a state or a step themselves.
"""
from hvae_jax.training.guards import TrainingError
from hvae_jax.training.loop import train_and_evaluate
from hvae_jax.training.state import (TrainState, checkpoint_metadata, fresh_state, init_state,
                                     make_optimizer)
from hvae_jax.training.step import (compile_train_step, make_data_parallel, make_eval_fn,
                                    make_train_step)

__all__ = ["TrainingError", "TrainState", "checkpoint_metadata", "compile_train_step",
           "fresh_state", "init_state", "make_data_parallel", "make_eval_fn",
           "make_optimizer", "make_train_step", "train_and_evaluate"]
