"""hvae-jax: Hierarchical VAEs Know What They Don't Know (Havtorn et al., ICML 2021) in JAX/Flax.

The public API. Importing `hvae_jax` is cheap (it does not import JAX, Flax or Orbax); each
function imports what it needs when called.

Score your own images with a trained model (uint8 `[N, 28, 28]` or `[N, 28, 28, 1]`)::

    import hvae_jax
    m = hvae_jax.load_model("pretrained/fmnist_hvae_small")
    scores = m.score(images_uint8)      # dict of [N] arrays: elbo, lk_k1, llr_k1, ... (nats)
    flags = m.is_ood(images_uint8)      # [N] bool: LLR^{>k} above the calibrated threshold

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

Public names: `load_model`, `TrainedModel`, `train`, `evaluate`, `build_model`, `base_config`,
`load_config`, `THRESHOLD_FILE`.
"""
from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
  import ml_collections
  import numpy as np

  from hvae_jax.api import TrainedModel

__version__ = "0.1.0"

__all__ = ["load_model", "TrainedModel", "train", "evaluate", "build_model", "base_config",
           "load_config", "THRESHOLD_FILE", "__version__"]

# Names served lazily from submodules (PEP 562), so `import hvae_jax` stays light.
_LAZY = {"TrainedModel": "hvae_jax.api", "THRESHOLD_FILE": "hvae_jax.api"}

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _default_xla_flags() -> None:
  """Turn off XLA:CPU's YNNPACK fusions unless the user set that flag in XLA_FLAGS.

  jaxlib 0.10 sends CPU convolutions to YNNPACK, which ran ours 2-10x slower than XLA's own
  kernels on the 2-core AVX2 machines we measured (bench/RESULTS.md: train step 13 -> 22
  examples/s). Set before JAX creates its CPU client, i.e. before the first computation;
  jaxlib versions without the flag would abort on it, so they are left alone.
  """
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in flags:
    return
  try:
    major, minor = (int(v) for v in metadata.version("jaxlib").split(".")[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return
  if (major, minor) >= (0, 10):
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type=".strip()


_default_xla_flags()


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'hvae_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


def base_config() -> "ml_collections.ConfigDict":
  """The default config: the paper's FashionMNIST HVAE; every knob with its default.

  `configs/*.py` start from it and override what differs (see hvae_jax/config.py).
  """
  from hvae_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.base_config()


def load_config(config: Union[str, os.PathLike, "ml_collections.ConfigDict"],
                overrides: Optional[Mapping[str, Any]] = None) -> "ml_collections.ConfigDict":
  """A validated config from a ConfigDict, a config file or a config name.

  Args:
    config: an `ml_collections.ConfigDict` (copied, not modified); a path to a config file
      defining `get_config()`, optionally with an argument as on the command line
      (`"configs/cifar_hvae.py:l4"`); or the name of a file in the repository's `configs/`
      folder (`"tiny"`, `"fmnist_hvae_small"`).
    overrides: dotted keys to set afterwards, e.g. `{"train.max_steps": 100}`.

  Raises:
    FileNotFoundError: no such config file.
    ValueError: the file has no `get_config`, or a key or value is invalid (the message names it).
  """
  import ml_collections  # pylint: disable=import-outside-toplevel

  from hvae_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  if isinstance(config, ml_collections.ConfigDict):
    c = ml_collections.ConfigDict(config.to_dict())
  else:
    c = _config_from_file(os.fspath(config))
  for dotted, value in (overrides or {}).items():
    *parents, leaf = dotted.split(".")
    node = c
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise ValueError(f"Unknown config key '{dotted}'; keys and defaults are in "
                         f"hvae_jax/config.py.")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"Unknown config key '{dotted}'; keys and defaults are in "
                       f"hvae_jax/config.py.")
    node[leaf] = value
  return config_lib.validate(c)


def _config_from_file(spec: str) -> "ml_collections.ConfigDict":
  import importlib.util  # pylint: disable=import-outside-toplevel
  path, arg = spec, None
  if ":" in spec and not os.path.exists(spec):
    path, arg = spec.rsplit(":", 1)
  if not os.path.exists(path):  # a name from configs/, or a path relative to the repository
    for candidate in (os.path.join(_REPO, "configs", f"{path}.py"), os.path.join(_REPO, path)):
      if not os.path.isabs(path) and os.path.isfile(candidate):
        path = candidate
        break
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found; pass a path to a .py file with "
                            f"get_config(), a name from configs/, or a ConfigDict.")
  module_spec = importlib.util.spec_from_file_location(
      f"_hvae_config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} defines no get_config().")
  return module.get_config(arg) if arg is not None else module.get_config()


def build_model(config: "ml_collections.ConfigDict",
                image_shape: Optional[Sequence[int]] = None):
  """The flax module `config.model` describes (HVAE or BIVA), for images `[H, W, C]`.

  `image_shape` defaults to the shape of `config.data.name`'s images. Use the module as any
  flax module: `model.init(key, x, key)`, `model.apply(variables, x, key, n_skip=k)` for the
  bound terms of L^{>k}, `model.apply(variables, key, num, method=model.sample)` for prior
  samples and `model.apply(variables, x, key, n_skip, method=model.reconstruct)`.
  """
  from hvae_jax import data, models  # pylint: disable=import-outside-toplevel
  if image_shape is None:
    image_shape = data.get_spec(config.data.name).image_shape
  return models.build_model(config, tuple(int(v) for v in image_shape))


def load_model(path: Union[str, os.PathLike],
               config: Optional["ml_collections.ConfigDict"] = None) -> "TrainedModel":
  """A trained model from a workdir (its latest checkpoint), a checkpoint step directory or a
  shipped model under `pretrained/`; see `hvae_jax.api.load_model`.

  A `threshold.json` in `path` or its parent folder, else in `path/eval` (where `evaluate`
  and `evaluate.py` write by default), becomes `TrainedModel.threshold`, the default of
  `TrainedModel.is_ood`.
  """
  from hvae_jax import api  # pylint: disable=import-outside-toplevel
  return api.load_model(os.fspath(path), config)


def train(config: Union[str, os.PathLike, "ml_collections.ConfigDict"],
          workdir: Union[str, os.PathLike], *, overrides: Optional[Mapping[str, Any]] = None,
          data_dir: Optional[str] = None) -> "TrainedModel":
  """Trains (or resumes) `config` in `workdir` and returns the trained model.

  A thin wrapper of `hvae_jax.train_lib.train_and_evaluate`: data-parallel over every local
  device (after `jax.distributed.initialize()` over every host), resumable from the latest
  checkpoint in `workdir`, with metrics, TensorBoard logs and sample grids written there.

  Args:
    config: a ConfigDict, a config file (`"configs/tiny.py"`, `"configs/cifar_hvae.py:l4"`) or
      the name of one in `configs/`; see `load_config`. A ConfigDict is not modified.
    workdir: output folder; rerunning with the same folder resumes.
    overrides: dotted config keys to set, e.g. `{"train.max_steps": 500}`.
    data_dir: folder with the offline `{name}.npz` data sets (sets `config.data.data_dir`);
      default `$HVAE_DATA_DIR`, else tensorflow_datasets.

  Returns:
    `load_model(workdir)`: the final checkpoint, ready to `score`.
  """
  from hvae_jax import train_lib  # pylint: disable=import-outside-toplevel
  c = load_config(config, overrides)
  if data_dir is not None:
    c.data.data_dir = os.fspath(data_dir)
  workdir = os.fspath(workdir)
  train_lib.train_and_evaluate(c, workdir)
  return load_model(workdir)


def evaluate(model: Union["TrainedModel", str, os.PathLike],
             ood: Union[Sequence[str], Mapping[str, "np.ndarray"]] = ("mnist",), *,
             output_dir: Optional[str] = None, in_test: Optional["np.ndarray"] = None,
             in_train: Optional["np.ndarray"] = None, max_examples: Optional[int] = None,
             ks: Optional[Sequence[int]] = None, iw_samples: Optional[int] = None,
             batch_size: Optional[int] = None, seed: int = 0, data_dir: Optional[str] = None,
             update_threshold: bool = True, scores: str = "paper",
             background: Optional[str] = None, ensemble: Sequence[str] = (),
             baseline_iw_samples: int = 100, **baseline_options: Any) -> dict:
  """In-distribution vs OOD evaluation (ELBO, L^{>k}, LLR^{>k}, and with `scores` the
  competing scores) as `evaluate.py` runs it.

  Scores the in-distribution test set, as many in-distribution training images (for the
  train-vs-test sanity check, the label-free choice of k and the decision threshold) and each
  OOD set, then writes `results.md`, `results.json`, `roc_<ood>.png`, `hist_<ood>.png`,
  `threshold.json` and score caches into `output_dir` (see `hvae_jax.evaluation.run`).

  Args:
    model: a `TrainedModel` or a path for `load_model`.
    ood: names of OOD data sets (`"mnist"`, `"kmnist"`, ...) loaded like the training data,
      or a dict name -> uint8 images.
    output_dir: default `<model path>/eval`.
    in_test, in_train: uint8 in-distribution images; default the test and train splits of
      `config.data.name`.
    max_examples: images per data set (a seeded subset); default `config.eval.max_examples`.
    ks: values of k; default every k in 1..L-1 (or `config.eval.ks`).
    iw_samples: importance samples for both bounds; default the config's.
    batch_size: scoring batch size; default `config.eval.batch_size`.
    seed: seed of the samples and the subsets.
    data_dir: folder with offline `.npz` data (default the config's, then `$HVAE_DATA_DIR`).
    update_threshold: set `model.threshold` to the newly calibrated one, so `model.is_ood`
      uses it (only when `model` is a TrainedModel object).
    scores: 'paper' (ELBO, L^{>k}, LLR^{>k}), 'all', or a comma list of the competing scores
      of `hvae_jax.baselines` (iw_nll, typicality, complexity, bg_llr, waic, regret), as
      `evaluate.py --scores`.
    background, ensemble: checkpoint paths of the background model (bg_llr) and of the other
      ensemble members (waic); default: those scripts/reproduce_baselines.sh trains beside
      the model's path.
    baseline_iw_samples: importance samples S of log p(x) in the competing scores.
    **baseline_options: other `baselines.BaselineOptions` fields, e.g. regret_steps=100,
      regret_lr=2e-4, typicality_batch=10.

  Returns:
    The results dict: `results["ood"][name]["metrics"][score]` has auroc / auprc / fpr80,
    `results["bits_per_dim"]`, `results["threshold"]` (also in `threshold.json`), ...
  """
  from hvae_jax import api, data, evaluation  # pylint: disable=import-outside-toplevel
  trained = model if isinstance(model, api.TrainedModel) else api.load_model(os.fspath(model))
  c = trained.config
  d_dir = data_dir or c.data.data_dir or None
  load = lambda name, split: data.load_images(name, split, d_dir, c.data.source)
  in_test = trained.check_images(load(c.data.name, c.data.test_split) if in_test is None
                                 else in_test)
  in_train = trained.check_images(load(c.data.name, c.data.train_split) if in_train is None
                                  else in_train)
  if isinstance(ood, str):
    ood = (ood,)
  if isinstance(ood, Mapping):
    ood_sets = {str(n): trained.check_images(x) for n, x in ood.items()}
  else:
    ood_sets = {n: trained.check_images(load(n, "test")) for n in ood}
  iw = iw_samples
  settings = evaluation.EvalSettings(
      ks=tuple(int(k) for k in ks) if ks else trained.default_ks(),
      iw_samples_elbo=iw or c.eval.iw_samples_elbo,
      iw_samples_lk=iw or c.eval.iw_samples_lk,
      batch_size=batch_size or c.eval.batch_size,
      max_examples=c.eval.max_examples if max_examples is None else int(max_examples),
      seed=seed)
  if output_dir is None:
    if not trained.path:
      raise ValueError("this model has no path; pass output_dir=.")
    output_dir = os.path.join(trained.path, "eval")
  extra = evaluation.baseline_scorer(trained, scores, in_test, in_train, settings,
                                     os.fspath(output_dir), background=background,
                                     ensemble=ensemble, iw_samples=baseline_iw_samples,
                                     **baseline_options)
  results = evaluation.run(trained, c.data.name, in_test, in_train, ood_sets, settings,
                           os.fspath(output_dir), extra_scores=extra)
  results["output_dir"] = os.path.abspath(output_dir)
  if update_threshold and "threshold" in results and trained is model:
    trained.threshold = dict(results["threshold"])
  return results
