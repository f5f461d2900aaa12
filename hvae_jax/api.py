"""The Python API: train, load and evaluate models, and score your own images.

    import hvae_jax
    m = hvae_jax.load_model("pretrained/fmnist_hvae_small")
    s = m.score(images_uint8)            # dict of [N] arrays: elbo, lk_k1, llr_k1, ...
    flags = m.is_ood(images_uint8)       # the per-input detector evaluate.py calibrated
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import ml_collections
import numpy as np
from jax.sharding import Mesh

from hvae_jax import (batching, cache, checkpoints, checks, config as config_lib, data, image_keys,
                      ood, thresholds)
from hvae_jax.models import abstract_params, build_model as _build_model



@dataclasses.dataclass
class TrainedModel:
  """A model, its parameters and config, with helpers to score raw images."""
  model: Any
  params: Any
  config: ml_collections.ConfigDict
  image_shape: tuple[int, int, int]
  kind: str  # 'binary' or 'discrete'
  threshold: Optional[dict] = None  # the detector evaluate.py calibrated (`thresholds.record`)
  path: str = ""
  threshold_note: str = ""  # why there is no threshold to use (`thresholds.load`)
  # Devices that score: None = every device of every process (data-parallel batches).
  mesh: Optional[Mesh] = None
  _fns: dict = dataclasses.field(default_factory=dict, repr=False)

  def check_images(self, images: Any) -> np.ndarray:
    """uint8 `[N, H, W, C]` (or `[N, H, W]` for greyscale), validated against the model."""
    x = np.asarray(images)
    h, w, c = self.image_shape
    if x.size == 0:
      raise ValueError(f"no images to score: got an empty array of shape {x.shape}; pass uint8 "
                       f"images [N, {h}, {w}, {c}] with N >= 1.")
    if x.dtype == np.bool_:
      raise ValueError("images are a bool array; pass uint8 pixels in [0, 255] (a binary mask "
                       "becomes an image with mask.astype(np.uint8) * 255).")
    if x.ndim == 3 and c == 1:
      x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (h, w, c):
      raise ValueError(f"images have shape {np.asarray(images).shape}, but this model takes "
                       f"[N, {h}, {w}, {c}] (or [N, {h}, {w}] for greyscale): resize or convert "
                       f"them first.")
    if x.dtype != np.uint8:
      if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0 and x.min() >= 0:
        raise ValueError("images look like floats in [0, 1]; pass raw uint8 pixels in [0, 255] "
                         "(e.g. (x * 255).round().astype(np.uint8)).")
      if x.size and (x.min() < 0 or x.max() > 255 or not np.all(np.equal(np.mod(x, 1), 0))):
        raise ValueError(f"images must be uint8 pixels in [0, 255], got dtype {x.dtype} with "
                         f"values in [{x.min()}, {x.max()}].")
      x = x.astype(np.uint8)
    return x

  def model_inputs(self, images_uint8: np.ndarray) -> np.ndarray:
    """What the model scores: a fixed, seeded binarization for greyscale, uint8 for colour."""
    if self.kind == "binary":
      return data.eval_binarize(images_uint8, self.config.data.eval_binarize_seed)
    return images_uint8

  def score_fn(self, ks: Sequence[int], iw_samples_elbo: int, iw_samples_lk: int, chunk_size: int):
    """The jitted `(params, x, key_data) -> {name: [batch]}` per-image scorer for these
    settings (`ood.make_image_score_fn`), built once and reused."""
    sig = (tuple(ks), iw_samples_elbo, iw_samples_lk, chunk_size)
    if sig not in self._fns:
      self._fns[sig] = ood.make_image_score_fn(self.model, ks, iw_samples_elbo, iw_samples_lk,
                                               chunk_size)
    return self._fns[sig]

  def default_ks(self) -> tuple[int, ...]:
    return tuple(self.config.eval.ks) or tuple(range(1, ood.max_k(self.model) + 1))

  def check_ks(self, ks: Optional[Sequence[int]]) -> tuple[int, ...]:
    """`ks` (default `default_ks()`) as a tuple of ints in 1..L-1, else one clear ValueError."""
    if not ks:
      return self.default_ks()
    top = ood.max_k(self.model)
    try:
      out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
      out = ()
    if not out or any(k < 1 or k > top for k in out) or any(
        float(k) != float(v) for k, v in zip(out, ks)):
      raise ValueError(f"k={list(ks)!r} is not allowed: this model has {top + 1} latent layers, "
                       f"so k must be integers in 1..{top}.")
    return out

  def score(self, images: Any, ks: Optional[Sequence[int]] = None, iw_samples: int = 1,
            iw_samples_lk: int = 1, batch_size: Optional[int] = None,
            seed: int = 0, progress: bool = False, desc: str = "score", done: Optional[dict] = None,
            on_batch: Optional[Callable[[dict], None]] = None) -> dict[str, np.ndarray]:
    """Per-image scores for any number of raw images (uint8 `[N, H, W(, C)]`).

    Returns float32 `[N]` arrays: elbo (nats), elbo_bpd, and per k: lk_k{k}, lk_k{k}_bpd,
    llr_k{k} (larger = more OOD). `iw_samples` S weights the ELBO only, so llr_k{k} is the
    paper's LLR^{>k}_S = L_S - L^{>k} (eqs. 9-10); `iw_samples_lk` > 1 also weights L^{>k}
    (both bounds weighted: another estimator than the paper's). Each image is scored with
    its own samples, keyed by its pixels and `seed` (`image_keys`), so its scores do not depend
    on the other images or their order. Batches are padded to `batch_size` (rounded up to a
    multiple of the device count) so one compiled function serves all, and split over `mesh`.
    `done` / `on_batch` continue an interrupted call and keep its progress
    (`batching.map_batches`): the result equals one uninterrupted call's.
    """
    ks = self.check_ks(ks)
    iw = checks.positive_int("iw_samples", iw_samples)
    iw_lk = checks.positive_int("iw_samples_lk", iw_samples_lk)
    bs = (self.config.eval.batch_size if batch_size is None
          else checks.positive_int("batch_size", batch_size))
    seed = checks.non_negative_int("seed", seed)
    images = self.check_images(images)
    fn = self.score_fn(ks, iw, iw_lk, self.config.eval.chunk_size)
    return batching.map_batches(
        lambda p, b: fn(p, *b), self.params,
        (self.model_inputs(images), image_keys.key_data(images, seed)), bs, None,
        mesh=self.mesh, progress=progress, desc=desc, done=done, on_batch=on_batch)

  @property
  def digest(self) -> str:
    """Identity of this model for score caches and thresholds: its parameters' bytes and its
    config, read afresh each time (a changed config or new parameters give a new digest);
    hashing the parameters is done once per parameter object."""
    key = ("params_digest", id(self.params))
    if key not in self._fns:
      self._fns = {k: v for k, v in self._fns.items() if k[0] != "params_digest"}
      self._fns[key] = cache.params_digest(self.params)
    d = self.config.data
    # What changes a score: the weights, the architecture and what the images become.
    data_keys = {k: d[k] for k in d.keys() if k not in ("data_dir", "source")}
    return cache.key_of(params=self._fns[key], model=self.config.model.to_dict(), data=data_keys,
                        kind=self.kind, image_shape=self.image_shape)

  def verdict(self, images: Any, threshold: Optional[dict] = None,
              **score_kwargs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores and the `[N]` bool verdicts (True = OOD) of the calibrated per-input detector.

    The threshold record (default: the one evaluate.py calibrated for this very model) fixes
    the detector, its reference, the ks and importance samples; the scores gain the
    detector's score (under its rule's name, larger = more OOD) and `driven_by`, the
    statistic (llr_k{k} or elbo) that drove each image's verdict. `score_kwargs` go to `score`
    (e.g. batch_size; a `seed` other than the calibration's draws other samples).
    """
    rec = threshold or self.threshold
    if not rec:
      raise ValueError(self.threshold_note or "no calibrated threshold for this model: run "
                       "evaluate.py on it (it writes threshold.json) or pass threshold=.")
    if rec.get("format") != thresholds.FORMAT or rec.get("model_digest") != self.digest:
      raise ValueError(thresholds.mismatch("this threshold", self.path or "<this model>"))
    detector = thresholds.to_detector(rec)
    s = self.score(images, **{**thresholds.score_settings(rec), **score_kwargs})
    s[detector.rule], s["driven_by"] = detector.score(s)
    return s, s[detector.rule] > detector.threshold

  def is_ood(self, images: Any, threshold: Optional[dict] = None, **score_kwargs) -> np.ndarray:
    """`[N]` bool verdicts (True = OOD) of the detector evaluate.py calibrated (`verdict`)."""
    return self.verdict(images, threshold, **score_kwargs)[1]


def load_model(path: str, config: Optional[ml_collections.ConfigDict] = None) -> TrainedModel:
  """Loads a workdir (latest checkpoint) or a checkpoint step directory.

  The config saved with the checkpoint is used unless `config` is given; a config that does
  not match the saved parameters raises `checkpoints.CheckpointError` naming the mismatch.
  """
  state, meta = checkpoints.load_checkpoint_dir(path)
  if config is None:
    if "config" not in meta:
      raise checkpoints.CheckpointError(f"checkpoint {path} has no saved config; pass --config.")
    config = config_lib.from_saved(meta["config"])
  config_lib.validate(config)
  image_shape = tuple(meta.get("image_shape") or data.DATASETS[config.data.name].image_shape)
  kind = meta.get("kind") or data.DATASETS[config.data.name].kind
  model = _build_model(config, image_shape)
  params = checkpoints.match_params(state["params"], abstract_params(model, image_shape), path,
                                    meta)
  trained = TrainedModel(model, params, config, image_shape, kind, path=path)
  trained.threshold, trained.threshold_note = thresholds.load(path, trained.digest)
  return trained


def build_model(config: ml_collections.ConfigDict,
                image_shape: Optional[Sequence[int]] = None):
  """The flax module `config.model` describes (HVAE or BIVA), for images `[H, W, C]`.

  `image_shape` defaults to the shape of `config.data.name`'s images. Use the module as any
  flax module: `model.init(key, x, key)`, `model.apply(variables, x, key, n_skip=k)` for the
  bound terms of L^{>k}, `model.apply(variables, key, num, method=model.sample)` for prior
  samples and `model.apply(variables, x, key, n_skip, method=model.reconstruct)`.
  """
  if image_shape is None:
    image_shape = data.get_spec(config.data.name).image_shape
  return _build_model(config, tuple(int(v) for v in image_shape))


def train(config: Union[str, os.PathLike, ml_collections.ConfigDict],
          workdir: Union[str, os.PathLike], *, overrides: Optional[Mapping[str, Any]] = None,
          data_dir: Optional[str] = None) -> TrainedModel:
  """Trains (or resumes) `config` in `workdir` and returns the trained model.

  A thin wrapper of `hvae_jax.train_lib.train_and_evaluate`: data-parallel over every local
  device (after `jax.distributed.initialize()` over every host), resumable from the latest
  checkpoint in `workdir`, with metrics, TensorBoard logs and sample grids written there.

  Args:
    config: a ConfigDict, a config file (`"configs/tiny.py"`, `"configs/cifar_hvae.py:l4"`) or
      the name of one in `configs/`; see `config.load_config`. A ConfigDict is not modified.
    workdir: output folder; rerunning with the same folder resumes.
    overrides: dotted config keys to set, e.g. `{"train.max_steps": 500}`.
    data_dir: folder with the offline `{name}.npz` data sets (sets `config.data.data_dir`);
      default `$HVAE_DATA_DIR`, else tensorflow_datasets.

  Returns:
    `load_model(workdir)`: the final checkpoint, ready to `score`.
  """
  from hvae_jax import train_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.load_config(config, overrides)
  if data_dir is not None:
    c.data.data_dir = os.fspath(data_dir)
  workdir = os.fspath(workdir)
  train_lib.train_and_evaluate(c, workdir)
  return load_model(workdir)


def evaluate(model: Union[TrainedModel, str, os.PathLike],
             ood: Union[Sequence[str], Mapping[str, np.ndarray]] = ("mnist",), *,
             output_dir: Optional[str] = None, in_test: Optional[np.ndarray] = None,
             in_train: Optional[np.ndarray] = None, max_examples: Optional[int] = None,
             ks: Optional[Sequence[int]] = None, iw_samples: Optional[int] = None,
             iw_samples_elbo: Optional[int] = None, iw_samples_lk: Optional[int] = None,
             batch_size: Optional[int] = None, seed: int = 0, detector: Optional[str] = None,
             data_dir: Optional[str] = None,
             update_threshold: bool = True, use_cache: bool = True, scores: str = "paper",
             background: Optional[str] = None, ensemble: Sequence[str] = (),
             baseline_iw_samples: int = 100, **baseline_options: Any) -> dict:
  """In-distribution vs OOD evaluation, exactly as `evaluate.py` runs it
  (`evaluation.evaluate`, the one path behind both).

  Scores the in-distribution test set, each OOD set and as many in-distribution training
  images (the reference: the train-vs-test sanity check, then every per-input detector is
  fitted on one half of them and calibrated on the other), measures every score and detector
  on the test and OOD images, then writes `results.md`, `results.json`, `roc_<ood>.png`,
  `hist_<ood>.png`, `threshold.json` (the `detector` rule, bound to this model) and score
  caches into `output_dir`.

  Args:
    model: a `TrainedModel` or a path for `load_model`.
    ood: names of OOD data sets (`"mnist"`, `"kmnist"`, ...) loaded like the training data,
      or a dict name -> uint8 images.
    output_dir: default `<workdir>/eval` for a training workdir, else
      `workdirs/<model name>/eval` (`evaluation.default_output_dir`).
    in_test, in_train: uint8 in-distribution images; default the test and train splits of
      `config.data.name`.
    max_examples: images per data set (a seeded subset), -1 for all; default the config's.
    ks: values of k; default every k in 1..L-1 (or `config.eval.ks`).
    iw_samples: importance samples S of the ELBO (the paper's LLR^{>k}_S = L_S - L^{>k});
      `iw_samples_elbo` is its long name; `iw_samples_lk` > 1 weights L^{>k} too (both
      bounds weighted: another estimator); default the config's.
    detector: the verdict's rule (`hvae_jax.detectors`: joint, any_k, any_k_typ, llr_k<k>);
      default `config.eval.detector`.
    batch_size: scoring batch size; default `config.eval.batch_size`.
    seed: seed of the samples and the subsets.
    data_dir: folder with offline data (default the config's, then `$HVAE_DATA_DIR`).
    update_threshold: set `model.threshold` to the newly calibrated one, so `model.is_ood`
      uses it (only when `model` is a TrainedModel object).
    use_cache: reuse scores cached for this very model, images and settings (False rescores).
    scores: 'paper' (ELBO, L^{>k}, LLR^{>k}), 'all', or a comma list of the competing scores
      (iw_nll, typicality, complexity, bg_llr, waic, regret), as `evaluate.py --scores`.
    background, ensemble: checkpoint paths of the background model (bg_llr) and of the other
      ensemble members (waic); default: those scripts/reproduce_baselines.sh trains beside
      the model's path.
    baseline_iw_samples: importance samples S of log p(x) in the competing scores.
    **baseline_options: other `competing.BaselineOptions` fields, e.g. regret_steps=100,
      regret_lr=2e-4, typicality_batch=10.

  Returns:
    The results dict: `results["ood"][name]["metrics"][score]` has auroc / auroc_se / auprc /
    fpr80 / fpr95 / aupr_in / aupr_out for every score and combined detector,
    `results["verdicts"][rule]` each detector's acceptance and OOD flag rates,
    `results["bits_per_dim"]`, `results["threshold"]` (also in `threshold.json`), ...
  """
  from hvae_jax import competing, evaluation  # pylint: disable=import-outside-toplevel
  trained = model if isinstance(model, TrainedModel) else load_model(os.fspath(model))
  settings = evaluation.EvalSettings.resolve(
      trained, ks=ks, iw_samples=iw_samples, iw_samples_elbo=iw_samples_elbo,
      iw_samples_lk=iw_samples_lk, batch_size=batch_size, max_examples=max_examples, seed=seed,
      detector=detector)
  try:
    baseline = competing.BaselineOptions(iw_samples=baseline_iw_samples, **baseline_options)
  except TypeError as e:  # an unknown keyword
    raise ValueError(f"{e}; the competing scores' options are the fields of "
                     f"hvae_jax.competing.BaselineOptions.") from None
  options = evaluation.EvalOptions(scores=scores, background=background,
                                   ensemble=tuple(ensemble), baseline=baseline,
                                   use_cache=use_cache)
  results = evaluation.evaluate(trained, settings, options, ood=ood, in_test=in_test,
                                in_train=in_train, output_dir=output_dir, data_dir=data_dir)
  if update_threshold and trained is model:
    trained.threshold, trained.threshold_note = dict(results["threshold"]), ""
  return results
