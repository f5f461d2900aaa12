"""A trained model ready to score raw images: `TrainedModel` and `load_model`.

    m = load_model("pretrained/fmnist_hvae")
    s = m.score(images_uint8)            # dict of [N] arrays: elbo, lk_k1, llr_k1, ...
    flags = m.is_ood(images_uint8)       # the per-input detector evaluate.py calibrated
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hvae_jax import (batching, cache, checkpoints, checks, config as config_lib, data, image_keys,
                      ood, preprocess, sharding, thresholds)
from hvae_jax.models import abstract_params, build_model

# Image passes in flight while scoring on a CPU host (config.eval.max_passes = 0): for the
# paper model, groups of up to 85 images with the ELBO and both L^{>k} at S = 1; scratch
# memory and throughput against unbounded batches in bench/RESULTS.md.
CPU_MAX_PASSES = 256


def max_passes_for(setting: int) -> int:
  """The bound on image passes in flight for config.eval.max_passes = `setting` (0 = no bound
  returned): automatic for 0, `CPU_MAX_PASSES` on a CPU host, where memory is what runs out,
  and no bound on GPUs and TPUs, where large batches keep the chip busy; -1 = no bound."""
  if setting == 0:
    return CPU_MAX_PASSES if jax.default_backend() == "cpu" else 0
  return max(setting, 0)


@dataclasses.dataclass
class TrainedModel:
  """A model, its parameters and config, with helpers to score raw images."""
  model: Any
  params: Any
  config: ml_collections.ConfigDict
  image_shape: tuple[int, int, int]
  kind: str  # 'binary' or 'discrete'
  threshold: Optional[thresholds.Threshold] = None  # the detector evaluate.py calibrated
  path: str = ""
  threshold_note: str = ""  # why there is no threshold to use (`thresholds.load`)
  # Devices that score: None = every device of every process (data-parallel batches).
  mesh: Optional[Mesh] = None
  _fns: dict = dataclasses.field(default_factory=dict, repr=False)  # jitted scorers
  # (id of the parameters hashed, their digest): hashing them once per parameter object
  _params_digest: tuple = dataclasses.field(default=(None, ""), repr=False)

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
    return preprocess.eval_input(images_uint8, self.kind, self.config.data.eval_binarize_seed)

  def score_fn(self, ks: Sequence[int], iw_samples_elbo: int, iw_samples_lk: int, chunk_size: int):
    """The jitted `(params, x, key_data) -> {name: [batch]}` per-image scorer for these
    settings (`ood.make_image_score_fn`, with `max_passes_for(config.eval.max_passes)` image
    passes in flight), built once and reused."""
    mesh = self.mesh if self.mesh is not None else sharding.make_data_mesh()
    sig = (tuple(ks), iw_samples_elbo, iw_samples_lk, chunk_size,
           max_passes_for(int(self.config.eval.max_passes)), mesh.size)
    if sig not in self._fns:
      self._fns[sig] = ood.make_image_score_fn(self.model, ks, iw_samples_elbo, iw_samples_lk,
                                               chunk_size, *sig[-2:])
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
    """Identity of this model for score caches and thresholds: what its scores depend on,
    its parameters' bytes and the config keys that change the computation
    (`config.score_keys`: the architecture and how images become input; not the training,
    evaluation or data-set keys), read afresh each time; hashing the parameters is done once
    per parameter object."""
    if self._params_digest[0] != id(self.params):
      self._params_digest = (id(self.params), cache.params_digest(self.params))
    return cache.key_of(params=self._params_digest[1], config=config_lib.score_keys(self.config),
                        kind=self.kind, image_shape=self.image_shape)

  def verdict(self, images: Any, threshold: Optional[thresholds.Threshold] = None,
              **score_kwargs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores and the `[N]` bool verdicts (True = OOD) of the calibrated per-input detector.

    The threshold (default: the one evaluate.py calibrated for this very model) fixes the
    detector, its reference, the ks and importance samples; the scores gain the detector's
    score (under its rule's name, larger = more OOD) and `driven_by`, the statistic
    (llr_k{k} or elbo) that drove each image's verdict. `score_kwargs` go to `score`
    (e.g. batch_size; a `seed` other than the calibration's draws other samples).
    """
    th = threshold or self.threshold
    if th is None:
      raise ValueError(self.threshold_note or "no calibrated threshold for this model: run "
                       "evaluate.py on it (it writes threshold.json) or pass threshold=.")
    th.check_model(self.digest, self.path)
    s = self.score(images, **{**th.score_settings(), **score_kwargs})
    s[th.rule], flags, s["driven_by"] = th.flags(s)
    return s, flags

  def is_ood(self, images: Any, threshold: Optional[thresholds.Threshold] = None,
             **score_kwargs) -> np.ndarray:
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
  spec = data.config_spec(config)
  image_shape = tuple(meta.get("image_shape") or spec.image_shape)
  kind = meta.get("kind") or spec.kind
  model = build_model(config, image_shape)
  params = checkpoints.match_params(state["params"], abstract_params(model, image_shape), path,
                                    meta)
  trained = TrainedModel(model, params, config, image_shape, kind, path=path)
  trained.threshold, trained.threshold_note = thresholds.load(path, trained.digest)
  return trained
