"""OOD scores of Havtorn et al. (2021): L^{>k}, LLR^{>k} and their importance-weighted forms.

For one posterior sample the model gives the bound for any k (paper eq. 5):

  L^{>k}(x) = log p(x | z) - sum_{i>k} [log q(z_i|.) - log p(z_i|.)],
  z_{<=k} ~ p(z_{<=k} | z_{>k}),  z_{>k} ~ q(z_{>k} | x),      L^{>0} = ELBO

and the score is the likelihood ratio (eq. 6)

  LLR^{>k}(x) = L^{>0}(x) - L^{>k}(x)          (larger = more OOD).

With S importance samples each bound becomes log (1/S) sum_s exp(L_s), computed with
logsumexp (paper's LLR^{>k}_S). Everything here is model-agnostic: it only uses the model's
`infer`/`generate` methods and `latent_layers`, so the HVAE and BIVA share it.

Cost structure: one bottom-up pass per sample is shared by every k (`jax.vmap` over k runs
only the top-down pass per k); samples are `vmap`ped in chunks and folded with a running
logaddexp in `lax.scan`, so S = 1000 needs the memory of one chunk.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hvae_jax import image_keys, objectives, stat_names

Array = jax.Array


def max_k(model: nn.Module) -> int:
  """Largest meaningful k: every latent layer but the top one may be skipped."""
  return max(model.latent_layers) - 1


def terms_one_sample(model: nn.Module, params: Any, x: Array, key: Array, ks: Array) -> Array:
  """`[len(ks), batch, 1 + n_latents]` single-sample terms of each bound L^{>k}: log p(x|z),
  then every latent's KL log q(z_i|.) - log p(z_i|.) (zero for the k lowest layers), in nats.

  With the model's skip_inference='sample' every k shares one bottom-up pass; with 'mean'
  (the reference's ood-llr.py) each k runs its own, with z_{<=k} at the posterior mean. The
  same key draws the same samples either way, so the ELBO (k = 0) does not depend on it.
  """
  k_q, k_p = jax.random.split(key)
  variables = {"params": params}
  infer = lambda k: model.apply(variables, x, k_q, k, method=model.infer)
  shared = infer(0) if model.skip_inference == "sample" else None

  def for_k(k):
    posteriors = infer(k) if shared is None else shared
    out = model.apply(variables, posteriors, x, k, k_p, method=model.generate)
    return jnp.concatenate([out.log_px[:, None], objectives.kl_per_latent(out)], axis=-1)

  return jax.vmap(for_k)(ks)


def bound_of(terms: Array) -> Array:
  """The bound of its terms `[..., 1 + n_latents]`: log p(x|z) - sum_i KL_i (eq. 5)."""
  return terms[..., 0] - terms[..., 1:].sum(-1)


def bounds_one_sample(model: nn.Module, params: Any, x: Array, key: Array,
                      ks: Array) -> Array:
  """`[len(ks), batch]` single-sample bounds L^{>k} (`terms_one_sample`, summed)."""
  return bound_of(terms_one_sample(model, params, x, key, ks))


def iw_terms(model: nn.Module, params: Any, x: Array, key: Array, ks: Sequence[int],
             iw_samples: int = 1, chunk_size: int = 16) -> tuple[Array, Array]:
  """Importance-weighted bounds and their terms over `iw_samples` samples.

  Returns `[len(ks), batch]` log mean_s exp(L_s^{>k}) in nats, and `[len(ks), batch, T]` each
  term (`terms_one_sample`) averaged over the samples with their self-normalized importance
  weights w_s = softmax_s(L_s^{>k}): the terms of the sample that dominates the bound. With one
  sample they are that sample's terms and sum back to the bound. Samples are drawn
  `chunk_size` at a time (vmapped), so memory is bounded by one chunk; the chunks are folded
  with a running logaddexp.
  """
  if iw_samples < 1:
    raise ValueError(f"iw_samples must be >= 1, got {iw_samples}.")
  ks = jnp.asarray(ks, jnp.int32)
  chunk = max(1, min(chunk_size, iw_samples))
  n_chunks = -(-iw_samples // chunk)
  # Sample s uses fold_in(key, s): the same S samples whatever the chunk size.
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_chunks * chunk))
  keys = keys.reshape(n_chunks, chunk)
  valid = (jnp.arange(n_chunks * chunk) < iw_samples).reshape(n_chunks, chunk)
  sample = jax.vmap(lambda k: terms_one_sample(model, params, x, k, ks))

  def fold(acc, inp):
    acc_lse, acc_terms = acc
    chunk_keys, chunk_valid = inp
    t = sample(chunk_keys)  # [chunk, K, batch, T]
    b = jnp.where(chunk_valid[:, None, None], bound_of(t), -jnp.inf)  # padding weighs nothing
    lse = jax.nn.logsumexp(b, axis=0)
    w = jnp.exp(b - lse)[..., None]  # weights within the chunk
    chunk_terms = jnp.sum(jnp.where(w > 0, w * t, 0.0), axis=0)
    new = jnp.logaddexp(acc_lse, lse)
    mix = jnp.exp(acc_lse - new)[..., None]  # the share of the samples before this chunk
    return (new, mix * acc_terms + (1.0 - mix) * chunk_terms), None

  n_terms = 1 + len(model.latent_layers)
  init = (jnp.full((ks.shape[0], x.shape[0]), -jnp.inf, jnp.float32),
          jnp.zeros((ks.shape[0], x.shape[0], n_terms), jnp.float32))
  (total, terms), _ = jax.lax.scan(fold, init, (keys, valid))
  return total - jnp.log(float(iw_samples)), terms


def iw_bounds(model: nn.Module, params: Any, x: Array, key: Array, ks: Sequence[int],
              iw_samples: int = 1, chunk_size: int = 16) -> Array:
  """`[len(ks), batch]` importance-weighted bounds log mean_s exp(L_s^{>k}) (`iw_terms`)."""
  return iw_terms(model, params, x, key, ks, iw_samples, chunk_size)[0]


def scores(model: nn.Module, params: Any, x: Array, key: Array, ks: Sequence[int] | None = None,
           iw_samples_elbo: int = 1, iw_samples_lk: int = 1,
           chunk_size: int = 16) -> dict[str, Array]:
  """All per-example scores for a batch `[batch, H, W, C]` (float32, nats).

  Returns
    'elbo': `[batch]` L^{>0} (with `iw_samples_elbo` samples: the IW bound on log p(x)),
    'lk': `[len(ks), batch]` L^{>k} with `iw_samples_lk` samples,
    'llr': `[len(ks), batch]` LLR^{>k} = elbo - lk,
    'elbo_terms': `[batch, T]`, 'lk_terms': `[len(ks), batch, T]`: each bound's per-layer
      terms (log p(x|z), KL per latent; `iw_terms`),
    'elbo_bpd', 'lk_bpd': the bounds in bits/dim.
  `ks` defaults to 1..L-1. When both sample counts agree, one set of samples serves every
  bound (the bottom-up pass is shared); otherwise the ELBO gets its own samples.
  """
  ks = tuple(range(1, max_k(model) + 1)) if ks is None else tuple(int(k) for k in ks)
  if any(k < 1 or k > max_k(model) for k in ks):
    raise ValueError(f"k must lie in 1..{max_k(model)} for this model, got {ks}.")
  if iw_samples_elbo == iw_samples_lk:
    b, t = iw_terms(model, params, x, key, (0,) + ks, iw_samples_elbo, chunk_size)
    elbo, lk, elbo_terms, lk_terms = b[0], b[1:], t[0], t[1:]
  else:
    k_e, k_k = jax.random.split(key)
    elbo, elbo_terms = iw_terms(model, params, x, k_e, (0,), iw_samples_elbo, chunk_size)
    elbo, elbo_terms = elbo[0], elbo_terms[0]
    lk, lk_terms = iw_terms(model, params, x, k_k, ks, iw_samples_lk, chunk_size)
  shape = x.shape[1:]
  return {
      "elbo": elbo,
      "lk": lk,
      "llr": elbo[None] - lk,
      "elbo_terms": elbo_terms,
      "lk_terms": lk_terms,
      "elbo_bpd": objectives.bits_per_dim(elbo, shape),
      "lk_bpd": objectives.bits_per_dim(lk, shape),
  }


def make_score_fn(model: nn.Module, ks: Sequence[int] | None = None, iw_samples_elbo: int = 1,
                  iw_samples_lk: int = 1, chunk_size: int = 16):
  """A jitted `fn(params, x, key) -> scores dict`, compiled once per batch shape."""
  def fn(params, x, key):
    return scores(model, params, x, key, ks, iw_samples_elbo, iw_samples_lk, chunk_size)
  return jax.jit(fn)


def passes_per_image(ks: Sequence[int], iw_samples_elbo: int, iw_samples_lk: int,
                     chunk_size: int) -> int:
  """Forward passes of one image in flight at once: every bound (the ELBO and each L^{>k})
  times the samples of one chunk (an upper bound when the two sample counts differ)."""
  return (1 + len(ks)) * max(1, min(chunk_size, max(iw_samples_elbo, iw_samples_lk)))


def sequential_groups(batch: int, devices: int, per_image: int, max_passes: int) -> int:
  """Into how many equal groups, scored one after another, a batch of `batch` images (split
  evenly over `devices`) is cut so that at most `max_passes` image passes are in flight (0:
  no bound, one group): the fewest whose group, a multiple of `devices`, fits; one image per
  device at worst."""
  per_device = batch // devices
  if max_passes <= 0 or batch * per_image <= max_passes:
    return 1
  return next((g for g in range(1, per_device + 1)
               if per_device % g == 0 and devices * (per_device // g) * per_image <= max_passes),
              per_device)


def make_image_score_fn(model: nn.Module, ks: Sequence[int], iw_samples_elbo: int = 1,
                        iw_samples_lk: int = 1, chunk_size: int = 16, max_passes: int = 0,
                        devices: int = 1):
  """A jitted `fn(params, x, key_data) -> {name: [batch]}` (names as `flatten_scores`) that
  scores every image of `x` `[batch, H, W, C]` alone, with its own key from `key_data`
  `[batch, 2]` (`image_keys.key_data`): an image's scores do not depend on its batch.

  With `max_passes` > 0 the batch (split over `devices`) is scored in equal groups one after
  another (`lax.map`) so that at most that many image passes (`passes_per_image`) are in
  flight: memory bounded whatever the batch size, and the same scores, since every image has
  its own key. Image i goes to group i % groups, so each group keeps the batch's split over
  the devices.
  """
  ks = tuple(ks)
  per_image = passes_per_image(ks, iw_samples_elbo, iw_samples_lk, chunk_size)

  def one(params, xi, key):
    s = scores(model, params, xi[None], key, ks, iw_samples_elbo, iw_samples_lk, chunk_size)
    return {n: v[0] for n, v in flatten_scores(s, ks, model).items()}

  def score_all(params, x, key_data):
    return jax.vmap(one, in_axes=(None, 0, 0))(params, x, image_keys.sampling_keys(key_data))

  def fn(params, x, key_data):
    n = x.shape[0]
    groups = sequential_groups(n, devices, per_image, max_passes)
    if groups == 1:
      return score_all(params, x, key_data)
    split = lambda a: a.reshape(n // groups, groups, *a.shape[1:]).swapaxes(0, 1)
    out = jax.lax.map(lambda xk: score_all(params, *xk), (split(x), split(key_data)))
    return jax.tree_util.tree_map(lambda v: v.swapaxes(0, 1).reshape(n, *v.shape[2:]), out)
  return jax.jit(fn)


def flatten_scores(s: dict[str, Any], ks: Sequence[int], model: nn.Module) -> dict[str, Array]:
  """Named `[batch]` float32 score arrays: elbo, lk_k{k}, llr_k{k} (+ bits/dim) and the
  per-layer terms of every pass (`stat_names`: recon, kl_l1, ..., recon_k{k}, kl_k{k}_l2, ...);
  traceable, so a jitted scorer can return them (each leading axis the batch, as
  `map_batches` needs)."""
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  names, layers = model.latent_names, model.latent_layers
  out = {"elbo": f32(s["elbo"]), "elbo_bpd": f32(s["elbo_bpd"])}
  out.update({n: f32(s["elbo_terms"][..., j]) for j, n in stat_names.pass_terms(0, names, layers)})
  for i, k in enumerate(ks):
    out[f"lk_k{k}"] = f32(s["lk"][i])
    out[f"lk_k{k}_bpd"] = f32(s["lk_bpd"][i])
    out[f"llr_k{k}"] = f32(s["llr"][i])
    out.update({n: f32(s["lk_terms"][i, ..., j])
                for j, n in stat_names.pass_terms(k, names, layers)})
  return out
