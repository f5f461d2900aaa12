"""The Python API: train and evaluate; `load_model` (hvae_jax.trained) loads a model and
`build_model` (hvae_jax.models) builds one from a config.

    import hvae_jax
    m = hvae_jax.train("configs/tiny.py", "workdirs/tiny", overrides={"train.max_steps": 200})
    results = hvae_jax.evaluate(m, ood=("mnist",), max_examples=1000)
    flags = m.is_ood(images_uint8)       # the per-input detector evaluate() calibrated
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence, Union

import ml_collections
import numpy as np

from hvae_jax import config as config_lib, evaluation, thresholds
from hvae_jax.data import npz
from hvae_jax.trained import TrainedModel, load_model


def train(config: Union[str, os.PathLike, ml_collections.ConfigDict],
          workdir: Union[str, os.PathLike], *, overrides: Optional[Mapping[str, Any]] = None,
          data_dir: Optional[str] = None,
          images: Union[None, np.ndarray, Mapping[str, np.ndarray]] = None) -> TrainedModel:
  """Trains (or resumes) `config` in `workdir` and returns the trained model.

  A thin wrapper of `hvae_jax.training.train_and_evaluate`: data-parallel over every local
  device (after `jax.distributed.initialize()` over every host), resumable from the latest
  checkpoint in `workdir`, with metrics, TensorBoard logs and sample grids written there.

  Args:
    config: a ConfigDict, a config file (`"configs/tiny.py"`, `"configs/cifar_hvae.py:l4"`) or
      the name of one in `configs/`; see `config.load_config`. A ConfigDict is not modified.
    workdir: output folder; rerunning with the same folder resumes.
    overrides: dotted config keys to set, e.g. `{"train.max_steps": 500}`.
    data_dir: folder with the offline `{name}.npz` data sets (sets `config.data.data_dir`);
      default `$HVAE_DATA_DIR`, else tensorflow_datasets.
    images: your own data instead of `config.data.name`'s: uint8 `[N, H, W(, C)]` (split by
      the seeded split of `hvae_jax.data.splits`) or `{"train": ..., "test": ...}`. Saved as
      `<workdir>/<workdir's name>.npz` and named `npz:<that file>` in the config, so the
      checkpoint says what it was trained on and `evaluate` finds its test split there. They
      are brought to `config.train.image_shape` (default 28x28x1 for Bernoulli, 32x32x3 for
      DMoL).

  Returns:
    `load_model(workdir)`: the final checkpoint, ready to `score`.
  """
  # Loaded on the first call: scoring needs neither the training loop nor optax.
  from hvae_jax import training  # pylint: disable=import-outside-toplevel
  c = config_lib.load_config(config, overrides)
  if data_dir is not None:
    c.data.data_dir = os.fspath(data_dir)
  workdir = os.fspath(workdir)
  if images is not None:
    name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
    c.data.name = "npz:" + npz.write(os.path.join(workdir, f"{name}.npz"), images)
  training.train_and_evaluate(c, workdir)
  return load_model(workdir)


def evaluate(model: Union[TrainedModel, str, os.PathLike],
             ood: Union[Sequence[str], Mapping[str, Union[str, np.ndarray]]] = ("mnist",), *,
             output_dir: Optional[str] = None, in_test: Optional[np.ndarray] = None,
             in_train: Optional[np.ndarray] = None, data_dir: Optional[str] = None,
             update_threshold: bool = True, progress: bool = True, **options: Any) -> dict:
  """In-distribution vs OOD evaluation, exactly as `evaluate.py` runs it
  (`evaluation.evaluate`, the one path behind both).

  Scores the in-distribution test set, each OOD set and as many in-distribution training
  images (the reference: the train-vs-test sanity check, then every per-input detector is
  fitted on one half of them and calibrated on the other), measures every score and detector
  on the test and OOD images, then writes `results.md`, `results.json`, `roc_<ood>.png`,
  `hist_<ood>.png`, `threshold.json` (the `detector` rule, bound to this model), per set the
  flagged images (`<set>_most_ood.png`, `<set>_least_ood.png`, `<set>_scores.csv`) and score
  caches into `output_dir`.

  Args:
    model: a `TrainedModel` or a path for `load_model`.
    ood: OOD data sets, mixed freely: registry names (`"mnist"`, `"kmnist"`, ...) loaded like
      the training data, `"folder:PATH"`, `"npz:PATH"`, `"tfds:NAME"` (brought to the model's
      image shape), reported under short names (a folder's base name, ...); or a dict short
      name -> uint8 images or such a name.
    output_dir: default `<workdir>/eval` for a training workdir, else
      `workdirs/<model name>/eval` (`evaluation.default_output_dir`).
    in_test, in_train: uint8 in-distribution images; default the test and train splits of
      `config.data.name`.
    data_dir: folder with offline data (default the config's, then `$HVAE_DATA_DIR`).
    update_threshold: set `model.threshold` to the newly calibrated one, so `model.is_ood`
      uses it (only when `model` is a TrainedModel object).
    progress: show progress bars.
    **options: the evaluation's settings over the model's `config.eval` / `config.baselines`,
      by the names of `hvae_jax.options.OPTIONS` (the same as evaluate.py's flags) or as dotted
      config keys in a dict (`**{"eval.threshold_tpr": 0.9}`). The main ones:
      max_examples (images per set, a seeded subset; -1 = all), ks, iw_samples (importance
      samples S of the ELBO: the paper's LLR^{>k}_S = L_S - L^{>k}, eqs. 9-10),
      iw_samples_lk (> 1 weights L^{>k} too: another estimator), batch_size, seed, detector
      (the verdict's rule, `hvae_jax.detectors`), use_cache (False rescores), scores ('paper',
      'all', or a comma list of iw_nll, typicality, complexity, bg_llr, waic, regret),
      background / ensemble (checkpoint paths of bg_llr's and waic's models; default those
      scripts/reproduce_baselines.sh trains beside the model), baseline_iw_samples,
      typicality_batch, regret_steps, regret_lr, regret_weight_decay, regret_batch_size.

  Returns:
    The results dict: `results["ood"][name]["metrics"][score]` has auroc / auroc_se / auprc /
    fpr80 / fpr95 / aupr_in / aupr_out for every score and combined detector,
    `results["verdicts"][rule]` each detector's acceptance and OOD flag rates,
    `results["bits_per_dim"]`, `results["threshold"]` (also in `threshold.json`), ...
  """
  trained = model if isinstance(model, TrainedModel) else load_model(os.fspath(model))
  c = evaluation.eval_config(trained, options)
  settings = evaluation.EvalSettings.from_config(c)
  options_ = dataclasses.replace(evaluation.EvalOptions.from_config(c), progress=progress)
  results = evaluation.evaluate(trained, settings, options_, ood=ood, in_test=in_test,
                                in_train=in_train, output_dir=output_dir, data_dir=data_dir)
  if update_threshold and trained is model:
    trained.threshold, trained.threshold_note = thresholds.Threshold.from_json(
        results["threshold"]), ""
  return results
