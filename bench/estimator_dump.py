"""Per-sample bounds for the S curve of LLR^{>1}_S: one resumable pass gives every S.

  HVAE_DATA_DIR=../shared/data nice -n 19 python bench/estimator_dump.py \
      --checkpoint=pretrained/fmnist_hvae --out=$HOME/runs/estimator/fmnist_hvae --n=500

For each image (FashionMNIST test and MNIST, alternating blocks so a partial run stays
balanced) it stores, in nats:
  main  `[N, s_max, 2]`: L_s (k = 0, the ELBO) and L_s^{>1} of samples s = 0..s_max-1, drawn
        with the keys `ood.scores` gives the ELBO when iw_samples_elbo != iw_samples_lk
        (fold_in(k_e, s), k_e, k_k = split(image key)): both bounds of one sample share z;
  lk    `[N, extra]`: L^{>1} of samples keyed fold_in(k_k, j), skip_inference='sample';
        j = 0 is what `TrainedModel.score(iw_samples=S)` pairs with L_S (the paper's
        estimator, independent of the ELBO's samples);
  lk_mean `[N, extra]`: the same with skip_inference='mean' (the reference's use_mode).
So the paper's estimator at S is logsumexp(main[:, :S, 0]) - log S - lk[:, 0], exactly
evaluate.py's with --iw_samples=S. Images: the seeded subset evaluate.py scores with
--max_examples=subset (`scoring.limit`), in a seeded order so any prefix is a random part of it.
"""
import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from hvae_jax import data, image_keys, ood  # pylint: disable=wrong-import-position
from hvae_jax.evaluation import scoring  # pylint: disable=wrong-import-position
from hvae_jax.trained import load_model  # pylint: disable=wrong-import-position

SETS = (("in", "fashion_mnist", "test"), ("out", "mnist", "test"))


def make_dump_fn(model, model_mean, s_max: int, extra: int, chunk: int):
  """Jitted `(params, x [B, H, W, C], key_data [B, 2]) -> (main [B, s_max, 2], lk [B, extra],
  lk_mean [B, extra])`: every image with its own keys, samples `chunk` at a time."""
  def fn(params, x, key_data):
    def bound(m, xi, key, ks):
      return ood.bounds_one_sample(m, params, xi[None], key, jnp.asarray(ks))[:, 0]

    def one(xi, key):
      k_e, k_k = jax.random.split(key)  # as `ood.scores` when the two sample counts differ
      ke = jax.vmap(lambda i: jax.random.fold_in(k_e, i))(jnp.arange(s_max))
      kk = jax.vmap(lambda i: jax.random.fold_in(k_k, i))(jnp.arange(extra))
      main = jax.lax.map(lambda k: bound(model, xi, k, (0, 1)), ke, batch_size=chunk)
      lk = jax.lax.map(lambda k: bound(model, xi, k, (1,))[0], kk, batch_size=chunk)
      lk_mean = jax.lax.map(lambda k: bound(model_mean, xi, k, (1,))[0], kk, batch_size=chunk)
      return main, lk, lk_mean

    return jax.vmap(one)(x, image_keys.sampling_keys(key_data))
  return jax.jit(fn)


def images_of(trained, name: str, split: str, subset: int, n: int, seed: int) -> np.ndarray:
  """The first `n` of evaluate.py's seeded `subset` of a set, in a seeded random order."""
  x = trained.check_images(data.load_images(name, split))
  x = scoring.limit(x, subset, seed)
  return x[np.random.default_rng([seed, 1]).permutation(len(x))[:n]]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", default="pretrained/fmnist_hvae")
  ap.add_argument("--out", required=True, help="folder for the per-block npz files")
  ap.add_argument("--n", type=int, default=500, help="images per side")
  ap.add_argument("--subset", type=int, default=1000, help="evaluate.py's --max_examples")
  ap.add_argument("--s_max", type=int, default=250)
  ap.add_argument("--extra", type=int, default=16, help="independent L^{>1} samples")
  ap.add_argument("--block", type=int, default=10, help="images per saved block")
  ap.add_argument("--images_per_call", type=int, default=2)
  ap.add_argument("--chunk", type=int, default=25, help="samples vmapped at once")
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  os.makedirs(a.out, exist_ok=True)
  trained = load_model(a.checkpoint)
  model_mean = trained.model.clone(skip_inference="mean")
  fn = make_dump_fn(trained.model.clone(skip_inference="sample"), model_mean, a.s_max,
                    a.extra, a.chunk)
  sets = {tag: images_of(trained, name, split, a.subset, a.n, a.seed)
          for tag, name, split in SETS}
  n_blocks = -(-a.n // a.block)
  print(f"{a.checkpoint}: {a.n} per side, s_max={a.s_max}, extra={a.extra}, "
        f"{len(glob.glob(os.path.join(a.out, '*.npz')))} blocks already done", flush=True)
  for b in range(n_blocks):
    for tag, x_all in sets.items():
      path = os.path.join(a.out, f"{tag}_{b:04d}.npz")
      if os.path.exists(path):
        continue
      x = x_all[b * a.block:(b + 1) * a.block]
      t0 = time.time()
      outs = [fn(trained.params, trained.model_inputs(x[i:i + a.images_per_call]),
                 image_keys.key_data(x[i:i + a.images_per_call], a.seed))
              for i in range(0, len(x), a.images_per_call)]
      main_, lk, lk_mean = (np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(3))
      tmp = path + ".tmp.npz"
      np.savez(tmp, main=main_, lk=lk, lk_mean=lk_mean, images=x,
               seconds=np.asarray(time.time() - t0))
      os.replace(tmp, path)  # a killed run never leaves a half-written block
      print(f"{tag} block {b + 1}/{n_blocks}: {len(x)} images in {time.time() - t0:.1f} s",
            flush=True)


if __name__ == "__main__":
  main()
