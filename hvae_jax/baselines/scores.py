"""Competing OOD scores (the baselines of Havtorn et al. 2021, Table 2) for our HVAE/BIVA.

Every score is a per-example array oriented so that LARGER = MORE OOD, as `evaluation.run`
expects (`larger_is_ood` tells `evaluation.orientation` so). Rows and what they compute, with
log p̂(x) the importance-weighted bound `ood.iw_bounds(k=0)` with S samples (S = 1: the ELBO):

  iw_nll          -log p̂(x)                                      (IW log-likelihood)
  typicality      | -log p̂(x) - Ĥ |, Ĥ = mean -log p̂ on in-distribution training data
                                                                  (Nalisnick et al. 2019)
  typicality_batch | mean_{batch of M} -log p̂ - Ĥ |, per example: the score of its batch
  complexity_png  S(x) = bpd_model(x) - L(x), L = PNG length in bits/dim (Serrà et al. 2020)
  complexity_jp2  the same with L = lossless JPEG 2000 length (Serrà et al.'s second codec)
  bg_llr          log p̂_background(x) - log p̂_model(x)          (Ren et al. 2019)
  neg_waic        -(E_θ[log p̂(x|θ)] - Var_θ[log p̂(x|θ)])         (Choi et al. 2018)
  regret          log p̂(x; φ*(x)) - log p̂(x; φ), φ* = encoder refit to x (Xiao et al. 2020)

The model-based pieces are pure jax functions, vectorised over the batch and jitted once per
batch shape; `hvae_jax.competing` runs them over whole data sets for `evaluation.evaluate`.

FLIF (the compressor Serrà et al. found best) is not offered: no FLIF binding is installable
from PyPI (`pip download --no-deps` finds no 'flif', 'pyflif', 'python-flif', 'flifpy' or
'pillow-flif'; Pillow has no FLIF codec and the imagecodecs wheel ships none either, only
FLIF's successor JPEG XL). Serrà et al.'s other two codecs, PNG and JPEG 2000, both come with
Pillow's wheels and are used instead.
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image, features

from hvae_jax import objectives, ood

Array = jax.Array

# Score families `--scores` accepts, and the rows each one writes.
FAMILIES: dict[str, tuple[str, ...]] = {
    "iw_nll": ("iw_nll",),
    "typicality": ("typicality", "typicality_batch"),
    "complexity": ("complexity_png", "complexity_jp2"),
    "bg_llr": ("bg_llr",),
    "waic": ("neg_waic",),
    "regret": ("regret",),
}
SCORE_NAMES: tuple[str, ...] = tuple(n for rows in FAMILIES.values() for n in rows)
# Top-level parameter names of the inference network: HVAE q_blocks/q_latents/q_proj; BIVA
# also bu_proj (projects z^BU up the inference path) and td_merge (TD posterior input).
ENCODER_PREFIXES: tuple[str, ...] = ("q_", "bu_proj_", "td_merge_")


def larger_is_ood(name: str) -> bool:
  """True for the rows of this module (all oriented larger = more OOD)."""
  return name in SCORE_NAMES


# ----------------------------------------------------------------------------------------------
# Likelihood estimates (shared by most scores)


def log_likelihood(model: nn.Module, params: Any, x: Array, key: Array, iw_samples: int = 1,
                   chunk_size: int = 16) -> Array:
  """`[batch]` log p̂(x) in nats: the IW bound log (1/S) sum_s exp(L_s^{>0}) (Burda et al.
  2016), i.e. `ood.iw_bounds` with k = 0; S = 1 gives the ELBO. `x` `[batch, H, W, C]`."""
  return ood.iw_bounds(model, params, x, key, (0,), iw_samples, chunk_size)[0]


# ----------------------------------------------------------------------------------------------
# Typicality test (Nalisnick, Matsukawa, Teh & Lakshminarayanan 2019)


def typicality(nll: Array, entropy: float) -> Array:
  """`[N]` per-example typicality score |-log p(x) - Ĥ| (Nalisnick et al. 2019, eq. 4 with
  M = 1), where Ĥ ≈ H[p] is the mean -log p over in-distribution training data."""
  return jnp.abs(jnp.asarray(nll) - entropy)


def batch_groups(n: int, batch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Random batches for the batch-level test: `(members, batch_indices)` pairs over 0..n-1.

  A seeded permutation is cut into n // batch disjoint batches (members = the batch). The
  n % batch left-over indices are the members of one more batch, filled up to `batch` with
  indices drawn (seeded, without repeats) from the others, which only enter its mean. So every
  index is a member of exactly one batch and every batch has `batch` elements (one batch of
  all n when n <= batch).
  """
  if batch < 1:
    raise ValueError(f"typicality batch size must be >= 1, got {batch}.")
  rng = np.random.default_rng(seed)
  perm = rng.permutation(n)
  if n <= batch:
    return [(perm, perm)]
  nb = n // batch
  groups = [(g, g) for g in perm[:nb * batch].reshape(nb, batch)]
  rest = perm[nb * batch:]
  if rest.size:
    fill = rng.choice(perm[:nb * batch], batch - rest.size, replace=False)
    groups.append((rest, np.concatenate([rest, fill])))
  return groups


def batch_typicality(nll: np.ndarray, entropy: float, batch: int, seed: int = 0) -> np.ndarray:
  """`[N]` batch-level typicality test (Nalisnick et al. 2019, eq. 4):
  |(1/M) sum_{m=1}^M -log p(x_m) - Ĥ| over random batches of M = `batch` examples of the
  same set (`batch_groups`). Each example gets the score of the batch it is a member of, so
  the per-example AUROC is the batch-level AUROC with batches weighted by their member count
  (all M except the one left-over batch). M = 1 is the per-example `typicality`."""
  nll = np.asarray(nll, np.float64)
  out = np.empty(nll.shape, np.float32)
  for members, idx in batch_groups(len(nll), batch, seed):
    out[members] = abs(float(nll[idx].mean()) - entropy)
  return out


# ----------------------------------------------------------------------------------------------
# Input complexity (Serrà, Álvarez, Gómez, Slizovskaia, Núñez & Luque 2020)


# Lossless codecs for L(x): Pillow's PNG (zlib level 9) and JPEG 2000 (OpenJPEG, reversible 5/3
# wavelet, bare J2K codestream: the JP2 container only adds a constant).
CODECS: tuple[str, ...] = ("png", "jp2")


def check_codec(codec: str) -> None:
  """Raises a ValueError/RuntimeError saying what to do if `codec` cannot be used here."""
  if codec not in CODECS:
    raise ValueError(f"unknown codec {codec!r}; choose from {CODECS}.")
  if codec == "jp2" and not features.check("jpg_2000"):
    raise RuntimeError("this Pillow was built without OpenJPEG, which the input-complexity "
                       "score's JPEG 2000 codec needs: install Pillow's PyPI wheel "
                       "(pip install --force-reinstall pillow), which includes it.")


def _encoded_bytes(img: np.ndarray, binary: bool, codec: str) -> int:
  """Bytes of one `[H, W, C]` image compressed losslessly with `codec`."""
  px = img.astype(np.uint8)
  if binary and codec == "png":
    pil = Image.fromarray(px[..., 0].astype(bool))  # mode '1': a 1-bit PNG
  else:  # 'L' or 'RGB'; JPEG 2000 has no 1-bit mode, and {0, 1}'s empty bit planes cost ~nothing
    pil = Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px)
  with io.BytesIO() as f:
    if codec == "png":
      pil.save(f, format="PNG", compress_level=9)
    else:
      pil.save(f, format="JPEG2000", irreversible=False, no_jp2=True)
    return f.getbuffer().nbytes


def compressed_bits_per_dim(images: np.ndarray, codec: str = "png") -> np.ndarray:
  """`[N]` L(x): length in bits per dimension of each image compressed losslessly by `codec`
  ('png' or 'jp2', see `CODECS`), headers included, as Serrà et al. (and Xiao et al.'s code) do.

  `images` `[N, H, W, C]`: float {0, 1} (binarized model input) is written as a 1-bit PNG
  (mode '1') or an 8-bit JPEG 2000 of 0s and 1s, integer pixels as 8-bit greyscale (C = 1) or
  RGB (C = 3). D = H * W * C.
  """
  check_codec(codec)
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, 1 or 3], got {x.shape}.")
  binary = np.issubdtype(x.dtype, np.floating) or x.dtype == bool
  if binary and x.size and not np.all((x == 0) | (x == 1)):
    raise ValueError("float images must be binary {0, 1} (the binarized model input).")
  dims = math.prod(x.shape[1:])
  return np.asarray([8.0 * _encoded_bytes(img, binary, codec) / dims for img in x], np.float32)


def input_complexity(model_bpd: Array, complexity_bpd: Array) -> Array:
  """`[N]` Serrà et al. (2020, eq. 2): S(x) = -ℓ_M(x) - L(x), where ℓ_M(x) = log2 p_M(x)
  is the model's log-likelihood and L(x) = -log2 p_0(x) the compressed length, both per
  dimension; so S(x) = bpd_M(x) - L(x) = log2 [p_0(x) / p_M(x)] / D with bpd_M the model's
  bits/dim (-log2 p̂_M / D >= 0). Larger S = the model explains x worse than a generic
  compressor = more OOD (Serrà et al. use S directly as the OOD score)."""
  return jnp.asarray(model_bpd) - jnp.asarray(complexity_bpd)


# ----------------------------------------------------------------------------------------------
# Likelihood ratio against a background model (Ren et al. 2019)


def background_llr(log_p_model: Array, log_p_background: Array) -> Array:
  """`[N]` -LLR(x) = -(log p_model(x) - log p_background(x)) (Ren et al. 2019, eq. 5 with the
  sign flipped so that larger = more OOD); the background model is the same architecture
  trained with `config.data.perturb_rate` = mu > 0 (`preprocess.perturb`, fresh noise every
  step), so it captures the population-level background statistics."""
  return jnp.asarray(log_p_background) - jnp.asarray(log_p_model)


# ----------------------------------------------------------------------------------------------
# WAIC over an ensemble (Choi, Jang & Alemi 2018)


def waic(log_ps: Array) -> Array:
  """`[N]` WAIC(x) = E_θ[log p(x|θ)] - Var_θ[log p(x|θ)] from `log_ps` `[M, N]` of M
  independently trained models (Choi et al. 2018, eq. 1); mean and (population, ddof = 0)
  variance over the ensemble's empirical distribution of θ. Lower WAIC = more OOD."""
  lp = jnp.asarray(log_ps)
  return jnp.mean(lp, axis=0) - jnp.var(lp, axis=0)


# ----------------------------------------------------------------------------------------------
# Likelihood regret (Xiao, Yan & Amit 2020)


def is_encoder_param(name: str) -> bool:
  """Whether a top-level parameter collection belongs to the inference network q(z|x)."""
  return name.startswith(ENCODER_PREFIXES)


def split_encoder(params: Mapping[str, Any]) -> tuple[dict, dict]:
  """`(encoder, decoder)` top-level parameter dicts; `{**decoder, **encoder}` is `params`."""
  enc = {k: v for k, v in params.items() if is_encoder_param(k)}
  dec = {k: v for k, v in params.items() if not is_encoder_param(k)}
  if not enc:
    raise ValueError(f"no inference-network parameters (names starting with {ENCODER_PREFIXES})"
                     f" among {sorted(params)}.")
  return enc, dec


def regret_step(model: nn.Module, tx: optax.GradientTransformation, dec: Mapping[str, Any],
                enc: Any, opt_state: Any, x1: Array, key: Array) -> tuple[Any, Any]:
  """One refit step for ONE example `x1` `[1, H, W, C]`: `tx` (Adam) on -ELBO(x1) with one
  fresh posterior sample (β = 1, no free bits), over the encoder parameters `enc` only, the
  decoder `dec` fixed. Returns the new (enc, opt_state)."""
  def neg_elbo(e):
    return -objectives.bound(model.apply({"params": {**dec, **e}}, x1, key))[0]
  updates, opt_state = tx.update(jax.grad(neg_elbo)(enc), opt_state, enc)
  return optax.apply_updates(enc, updates), opt_state


class LikelihoodRegret:
  """Likelihood regret (Xiao, Yan & Amit 2020, eq. 3), vectorised over the batch:

    regret(x) = log p̂(x; φ*(x), θ) - log p̂(x; φ, θ),  φ*(x) = φ refit to x alone,

  φ the trained encoder, θ the fixed decoder. `fn(params, x, key, steps)` with `x`
  `[batch, H, W, C]` returns `[batch]` (regret, before, after): every example gets its own
  copy of φ and of the optimizer state (`jax.vmap` over examples) and `steps` `regret_step`s;
  before/after are `log_likelihood` with `iw_samples`, the same samples for both, so 0 steps
  give 0 up to float rounding. Larger regret = more OOD. Example i uses key
  `jax.random.split(key, batch)[i]` (`with_keys` takes the per-example keys directly). The
  optimizer is Xiao et al.'s: Adam(`lr`, b1 0.9, b2 0.999) with `weight_decay` added to the
  gradient as an L2 term (torch's Adam(weight_decay=...)); their code uses lr 2e-4, 5e-5, 100
  steps and bounds with 1000 samples. Memory grows with batch x (encoder size x 3): use small
  batches for big models.

  The step loop runs in Python, one jitted vmapped step per call: XLA:CPU runs the same step
  4-10x slower inside `lax.fori_loop` (bench/regret_throughput.py, bench/RESULTS.md), and a
  Python loop needs no recompilation per step count.
  """

  def __init__(self, model: nn.Module, lr: float, iw_samples: int = 1, chunk_size: int = 16,
               weight_decay: float = 0.0):
    self.model = model
    self.tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))
    self.iw_samples, self.chunk_size = iw_samples, chunk_size
    self._compiled: dict = {}

  def _fns(self, mesh: Optional[Mesh]) -> tuple[Callable, Callable, Callable]:
    """(start, step, bounds), jitted once per mesh. On a mesh each device refits its own
    examples (`shard_map`): the per-example encoder copies never cross devices, and XLA's
    partitioner is not asked to split the per-example (grouped) convolutions, which it got
    wrong on 2 CPU devices (tests/integration/test_parallel_scoring.py)."""
    if mesh not in self._compiled:
      step = jax.vmap(self._step_one, in_axes=(None, 0, 0, 0, 0, None))
      bounds = jax.vmap(self._bounds_one, in_axes=(None, 0, 0, 0))
      fns = [(self._start_batch, (P(), P("data"))),
             (step, (P(), P("data"), P("data"), P("data"), P("data"), P())),
             (bounds, (P(), P("data"), P("data"), P("data")))]
      if mesh is not None:
        fns = [(jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=P("data"),
                              check_vma=False), specs)
               for f, specs in fns]
      start, step, bounds = (f for f, _ in fns)
      self._compiled[mesh] = (jax.jit(start), jax.jit(step, donate_argnums=(1, 2)),
                              jax.jit(bounds))
    return self._compiled[mesh]

  def _start_batch(self, params: Any, keys: Array) -> tuple[Any, Any, Array, Array]:
    enc0, _ = split_encoder(params)
    tile = lambda t: jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a, (keys.shape[0],) + a.shape), t)
    k_opt, k_eval = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    return tile(enc0), tile(self.tx.init(enc0)), k_opt, k_eval

  def _step_one(self, params: Any, enc: Any, opt_state: Any, x1: Array, k_opt: Array,
                i: Array) -> tuple[Any, Any]:
    _, dec = split_encoder(params)
    return regret_step(self.model, self.tx, dec, enc, opt_state, x1[None],
                       jax.random.fold_in(k_opt, i))

  def _bounds_one(self, params: Any, enc: Any, x1: Array, k_eval: Array
                  ) -> tuple[Array, Array, Array]:
    _, dec = split_encoder(params)
    ll = lambda p: log_likelihood(self.model, p, x1[None], k_eval, self.iw_samples,
                                  self.chunk_size)[0]
    before, after = ll(params), ll({**dec, **enc})
    return after - before, before, after

  def with_keys(self, params: Any, x: Array, keys: Array, steps: int
                ) -> tuple[Array, Array, Array]:
    """`[batch]` (regret, before, after) of `x` `[batch, H, W, C]`, example i refit with key
    `keys[i]` (`keys` `[batch]`)."""
    if int(steps) < 0:
      raise ValueError(f"regret steps must be >= 0, got {steps}.")
    mesh = None
    if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding):
      mesh = x.sharding.mesh  # a batch split over devices: refit where the examples are
      keys = jax.device_put(keys, x.sharding)
    start, step, bounds = self._fns(mesh)
    enc, opt_state, k_opt, k_eval = start(params, keys)
    for i in range(int(steps)):
      enc, opt_state = step(params, enc, opt_state, x, k_opt, jnp.asarray(i, jnp.int32))
    return bounds(params, enc, x, k_eval)

  def __call__(self, params: Any, x: Array, key: Array, steps: int
               ) -> tuple[Array, Array, Array]:
    return self.with_keys(params, x, jax.random.split(key, x.shape[0]), steps)


def make_loglik_fn(model: nn.Module, iw_samples: int, chunk_size: int = 16) -> Callable:
  """Jitted `fn(params, x, key) -> [batch]` `log_likelihood`; params are an argument, so
  models of one architecture (ensembles) share the compilation."""
  return jax.jit(lambda params, x, key: log_likelihood(model, params, x, key, iw_samples,
                                                       chunk_size))
