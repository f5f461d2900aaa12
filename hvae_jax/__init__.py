"""hvae-jax: Hierarchical VAEs Know What They Don't Know (Havtorn et al., ICML 2021) in JAX/Flax.

The public API. Importing `hvae_jax` is cheap (it does not import JAX, Flax or Orbax); each
function imports what it needs when called.

Score your own images with a trained model (uint8 `[N, 28, 28]` or `[N, 28, 28, 1]`)::

    import hvae_jax
    m = hvae_jax.load_model("pretrained/fmnist_hvae_small")
    scores = m.score(images_uint8)      # dict of [N] arrays: elbo, lk_k1, llr_k1, ... (nats)
    flags = m.is_ood(images_uint8)      # [N] bool: the calibrated per-input detector's verdict

Train, evaluate against an OOD set, then use the calibrated threshold::

    m = hvae_jax.train("configs/tiny.py", "workdirs/tiny",
                       overrides={"train.max_steps": 200}, data_dir="../shared/data")
    results = hvae_jax.evaluate(m, ood=("mnist",), max_examples=1000)   # writes workdirs/tiny/eval
    print(results["ood"]["mnist"]["metrics"]["llr_k1"]["auroc"])
    flags = m.is_ood(images_uint8)      # evaluate() stored the threshold it calibrated

Build a model from a config without training::

    config = hvae_jax.base_config()                  # the paper's FashionMNIST HVAE
    config.model.dtype = "bfloat16"
    model = hvae_jax.build_model(config)             # a flax module, image shape from config.data
    variables = model.init(jax.random.key(0), x_binarized, jax.random.key(1))

Public names: `load_model`, `TrainedModel` (hvae_jax.trained), `train`, `evaluate`
(hvae_jax.api), `build_model` (hvae_jax.models), `base_config`, `load_config`
(hvae_jax.config), `THRESHOLD_FILE` (hvae_jax.thresholds). Each is served lazily from its
module on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from hvae_jax import xla_defaults as _xla_defaults  # noqa: F401  (sets CPU XLA flags on import)

__version__ = "0.1.0"

# Public name -> the module that defines it (PEP 562 lazy re-exports keep `import hvae_jax` light).
_EXPORTS = {"load_model": "hvae_jax.trained", "TrainedModel": "hvae_jax.trained",
            "train": "hvae_jax.api", "evaluate": "hvae_jax.api", "build_model": "hvae_jax.models",
            "THRESHOLD_FILE": "hvae_jax.thresholds", "base_config": "hvae_jax.config",
            "load_config": "hvae_jax.config"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'hvae_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
