"""Load a trained model and score your own images.

    import hvae_jax
    m = hvae_jax.load_model("pretrained/fmnist_hvae_small")
    s = m.score(images_uint8)            # dict of [N] arrays: elbo, lk_k1, llr_k1, ...
    verdict = m.is_ood(images_uint8)     # uses the calibrated threshold if one was saved
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from hvae_jax import checkpoints, config as config_lib, data, ood
from hvae_jax.models import build_model

THRESHOLD_FILE = "threshold.json"


@dataclasses.dataclass
class TrainedModel:
  """A model, its parameters and config, with helpers to score raw images."""
  model: Any
  params: Any
  config: ml_collections.ConfigDict
  image_shape: tuple[int, int, int]
  kind: str  # 'binary' or 'discrete'
  threshold: Optional[dict] = None  # {'score': name, 'value': float, ...} from evaluate.py
  path: str = ""
  _fns: dict = dataclasses.field(default_factory=dict, repr=False)

  def check_images(self, images: Any) -> np.ndarray:
    """uint8 `[N, H, W, C]` (or `[N, H, W]` for greyscale), validated against the model."""
    x = np.asarray(images)
    h, w, c = self.image_shape
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
    """The jitted scorer for these settings, built once and reused."""
    sig = (tuple(ks), iw_samples_elbo, iw_samples_lk, chunk_size)
    if sig not in self._fns:
      self._fns[sig] = ood.make_score_fn(self.model, ks, iw_samples_elbo, iw_samples_lk, chunk_size)
    return self._fns[sig]

  def default_ks(self) -> tuple[int, ...]:
    return tuple(self.config.eval.ks) or tuple(range(1, ood.max_k(self.model) + 1))

  def score(self, images: Any, ks: Optional[Sequence[int]] = None, iw_samples: int = 1,
            iw_samples_lk: Optional[int] = None, batch_size: Optional[int] = None,
            seed: int = 0, progress: bool = False, desc: str = "score") -> dict[str, np.ndarray]:
    """Per-image scores for any number of raw images (uint8 `[N, H, W(, C)]`).

    Returns float32 `[N]` arrays: elbo (nats), elbo_bpd, and per k: lk_k{k}, lk_k{k}_bpd,
    llr_k{k} (larger = more OOD). `iw_samples` applies to both bounds unless `iw_samples_lk`
    is given. Every batch is padded to `batch_size` so one compiled function serves all.
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    x = self.model_inputs(self.check_images(images))
    ks = tuple(ks) if ks else self.default_ks()
    iw_lk = iw_samples if iw_samples_lk is None else iw_samples_lk
    fn = self.score_fn(ks, iw_samples, iw_lk, self.config.eval.chunk_size)
    bs = min(batch_size or self.config.eval.batch_size, max(len(x), 1))
    key = jax.random.key(seed)
    parts = []
    with tqdm(total=len(x), desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
      for i in range(0, len(x), bs):
        xb = x[i:i + bs]
        m = len(xb)
        if m < bs:
          xb = np.concatenate([xb, np.repeat(xb[-1:], bs - m, 0)])
        s = ood.flatten_scores(fn(self.params, xb, jax.random.fold_in(key, i)), ks)
        parts.append({k: v[:m] for k, v in s.items()})
        bar.update(m)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}

  def verdict(self, images: Any, threshold: Optional[dict] = None,
              **score_kwargs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores at the threshold's settings and the `[N]` bool verdicts (True = OOD).

    The threshold (default: the one evaluate.py calibrated) fixes the score, its k and the
    importance samples of both bounds, so the verdict uses the score the threshold was set on.
    """
    th = threshold or self.threshold
    if not th:
      raise ValueError(f"no calibrated threshold for {self.path or 'this model'}: run "
                       f"evaluate.py on it (it writes {THRESHOLD_FILE}) or pass threshold=.")
    k = th.get("k")
    s = self.score(images, ks=(k,) if k else None, **threshold_samples(th), **score_kwargs)
    return s, s[th["score"]] > th["value"]

  def is_ood(self, images: Any, threshold: Optional[dict] = None, **score_kwargs) -> np.ndarray:
    """`[N]` bool verdicts: score > threshold, with the threshold evaluate.py calibrated."""
    return self.verdict(images, threshold, **score_kwargs)[1]


def threshold_samples(threshold: dict) -> dict[str, int]:
  """The `score` sample counts a threshold was calibrated with (older files: one `iw_samples`)."""
  both = int(threshold.get("iw_samples", 1))
  return {"iw_samples": int(threshold.get("iw_samples_elbo", both)),
          "iw_samples_lk": int(threshold.get("iw_samples_lk", both))}


def find_threshold(path: str) -> Optional[dict]:
  """The `threshold.json` in `path`, its parent folder, or `path/eval` (evaluate.py's output)."""
  for d in (path, os.path.dirname(os.path.abspath(path)), os.path.join(path, "eval")):
    f = os.path.join(d, THRESHOLD_FILE)
    if os.path.isfile(f):
      with open(f, encoding="utf-8") as fh:
        return json.load(fh)
  return None


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
  model = build_model(config, image_shape)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), np.zeros((1, *image_shape), np.uint8 if kind == "discrete"
                                                    else np.float32), jax.random.key(0))["params"])
  params = checkpoints.match_params(state["params"], abstract, path, meta)
  threshold = find_threshold(path)
  return TrainedModel(model, params, config, image_shape, kind, threshold, path)
