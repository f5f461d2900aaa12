"""Names of the per-image statistics, and what each one is in words.

A model's bound is a sum of per-layer terms (`ood.terms_one_sample`); every term of every pass
is a statistic of its own (nats, float32):

  pass             bound      per-layer terms
  ELBO (k = 0)     elbo       recon = log p(x|z),      kl_<latent> for every latent
  L^{>k}           lk_k{k}    recon_k{k},              kl_k{k}_<latent> for latents above k

with KL_i = log q(z_i|.) - log p(z_i|z_{>i}) (one sample), so elbo = recon - sum kl_*, and
lk_k{k} = recon_k{k} - sum kl_k{k}_*. Latents are named by the model (`latent_names`): l1 (the
lowest), l2, ... for the HVAE; l1_bu, l1_td, ..., l<L> for BIVA's two streams. llr_k{k} =
elbo - lk_k{k} is the paper's score. Pure Python: the detectors read these names without JAX.
"""
from __future__ import annotations

import re
from typing import Sequence

_RECON = re.compile(r"recon(?:_k(\d+))?$")
_KL = re.compile(r"kl(?:_k(\d+))?_(l\d+(?:_[a-z0-9]+)?)$")


def latent_names(latent_layers: Sequence[int]) -> tuple[str, ...]:
  """`l{layer}` per latent; where a layer holds several latents, `l{layer}_{j}` (j = 1, ...)."""
  out = []
  for i, layer in enumerate(latent_layers):
    n = list(latent_layers).count(layer)
    out.append(f"l{layer}" if n == 1 else f"l{layer}_{latent_layers[:i].count(layer) + 1}")
  return tuple(out)


def pass_terms(k: int, names: Sequence[str], layers: Sequence[int]) -> list[tuple[int, str]]:
  """(index into the pass's terms `[recon, kl per latent]`, statistic name) of the pass
  L^{>k} (k = 0: the ELBO), leaving out the KL terms of the k lowest layers (zero there)."""
  tag = "" if k == 0 else f"_k{k}"
  out = [(0, f"recon{tag}")]
  out += [(1 + i, f"kl{tag}_{n}") for i, (n, layer) in enumerate(zip(names, layers)) if layer > k]
  return out


def is_term(name: str) -> bool:
  """True for a per-layer term (recon*, kl_*), False for bounds, scores and baselines."""
  return bool(_RECON.match(name) or _KL.match(name))


def pass_of(name: str) -> int:
  """The k of the pass a per-layer term belongs to (0: the ELBO pass)."""
  m = _RECON.match(name) or _KL.match(name)
  if not m:
    raise ValueError(f"{name!r} is not a per-layer term (recon*, kl_*).")
  return int(m.group(1) or 0)


def describe(name: str) -> str:
  """`name` in words, e.g. 'kl_k1_l2' -> 'KL of latent l2 in the L^{>1} pass'."""
  where = lambda k: "the ELBO pass" if k is None else f"the L^{{>{k}}} pass"
  m = _RECON.match(name)
  if m:
    return f"log p(x|z) in {where(m.group(1))}"
  m = _KL.match(name)
  if m:
    return f"KL of latent {m.group(2)} in {where(m.group(1))}"
  m = re.match(r"(llr|lk)_k(\d+)$", name)
  if m:
    return (f"LLR^{{>{m.group(2)}}}" if m.group(1) == "llr" else f"L^{{>{m.group(2)}}}")
  return "the ELBO" if name == "elbo" else name
