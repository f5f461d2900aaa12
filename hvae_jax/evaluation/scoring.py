"""The paper's scores of one data set (ELBO, L^{>k}, LLR^{>k}), cached and resumable."""
from __future__ import annotations

import time

import numpy as np

from hvae_jax import batching, cache, sharding
from hvae_jax.evaluation.settings import EvalSettings
from hvae_jax.scored import ScoredSet
from hvae_jax.trained import TrainedModel

# How often a set's scoring keeps what it has scored, so a killed run loses at most this much.
PARTIAL_EVERY_S = 60.0


def limit(images: np.ndarray, n: int, seed: int) -> np.ndarray:
  """A seeded random subset of `n` images (all if n < 0 or n >= len)."""
  if n < 0 or n >= len(images):
    return images
  return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


def score_set(trained: TrainedModel, images: np.ndarray, settings: EvalSettings,
              score_cache: cache.ScoreCache, tag: str) -> ScoredSet:
  """Scores of one data set, from `score_cache` if this model, these images and settings
  were scored before. Every score but bits/dim costs the whole pass's seconds (when it was
  computed, also for a cache hit)."""
  key = settings.cache_key(trained, images)
  name = f"scores_{tag}"
  arrays = score_cache.get(name, key)
  if arrays is None:
    arrays = _score_resumably(trained, images, settings, score_cache, name, key)
    score_cache.put(name, key, arrays)
    score_cache.drop_partial(name)
  scored = ScoredSet.from_arrays(arrays)
  if "_seconds" in arrays:  # one figure for the whole pass
    seconds = float(arrays["_seconds"])
    scored.seconds = {n: seconds for n in scored.scores if not n.endswith("_bpd")}
  return scored


def _score_resumably(trained: TrainedModel, images: np.ndarray, settings: EvalSettings,
                     score_cache: cache.ScoreCache, name: str, key: str) -> dict[str, np.ndarray]:
  """`trained.score` of a set that keeps its progress in `score_cache` at least every
  PARTIAL_EVERY_S seconds and when stopped (Ctrl-C, an error), and continues a pass a killed
  run left: the scores equal one uninterrupted pass's. `_seconds` counts every run's time."""
  mesh = trained.mesh if trained.mesh is not None else sharding.make_data_mesh()
  bs = batching.device_batch_size(settings.batch_size, len(images), mesh)
  pass_key = cache.key_of(scores=key, batch_size=bs)  # another split of the batches starts over
  done = score_cache.get_partial(name, pass_key)
  spent = 0.0 if done is None else float(done.pop("_seconds"))
  if done is not None:
    print(f"Note: {name}: continuing an interrupted pass at image {len(done['elbo'])} of "
          f"{len(images)} (cache in {score_cache.directory}); --no_cache rescores.")
  t0 = time.time()
  kept = {"at": t0, "out": None}

  def keep(out: dict, now: bool = False) -> None:
    kept["out"] = out
    if now or time.time() - kept["at"] >= PARTIAL_EVERY_S:
      score_cache.put_partial(name, pass_key,
                              {**out, "_seconds": np.asarray(spent + time.time() - t0)})
      kept["at"] = time.time()

  try:
    s = trained.score(images, ks=settings.ks, iw_samples=settings.iw_samples_elbo,
                      iw_samples_lk=settings.iw_samples_lk, batch_size=settings.batch_size,
                      seed=settings.seed, progress=True, desc=name.removeprefix("scores_"),
                      done=done, on_batch=keep)
  except BaseException:
    if kept["out"] is not None:
      keep(kept["out"], now=True)
    raise
  s["_seconds"] = np.asarray(spent + time.time() - t0)
  return s
