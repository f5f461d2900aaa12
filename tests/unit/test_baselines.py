"""Baseline OOD scores (hvae_jax/baselines.py): each against its formula, and evaluate.py
--scores=all end to end. Kept small: one tiny trained model, 64 images, S = 2.

The in-process scorer uses the shapes and settings of the evaluate.py run (batch 64, S = 2,
regret batch 32 and the default regret lr), so the subprocess finds its compilations in the
persistent compilation cache that conftest.py sets up."""
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from hvae_jax import api, baselines, evaluation, objectives, preprocess, training
from tests.helpers import DATA_DIR, REPO, fmnist_slice, mnist_slice, tiny_config, \
    tiny_model_and_params

N, S, SEED = 64, 2, 0


@pytest.fixture(scope="module")
def setup(tiny_workdir):
  """The trained tiny model, two untrained ones of the same architecture (as background and
  ensemble member), 8 test images, and every in-process baseline computed once."""
  trained = api.load_model(tiny_workdir)
  others = [api.TrainedModel(trained.model, tiny_model_and_params(seed=s)[1], trained.config,
                             trained.image_shape, trained.kind, path=f"untrained_{s}")
            for s in (1, 2)]
  images = np.concatenate([fmnist_slice(N // 2), mnist_slice(N // 2)])
  reference = fmnist_slice(N, "train", seed=3)
  opts = baselines.BaselineOptions(iw_samples=S, batch_size=N, typicality_batch=3,
                                   regret_steps=2, seed=SEED)  # regret: lr 2e-4, batch 32
  scorer = baselines.BaselineScorer(trained, opts, background=others[0], ensemble=[others[1]],
                                    reference_images=reference)
  scored = scorer.compute(images)
  bound = jax.jit(lambda p, x, k: objectives.bound(trained.model.apply({"params": p}, x, k)))

  def hand_loglik(params, x, salt=0):
    """log mean_s exp(ELBO_s), sample s drawn with fold_in(fold_in(key(seed + salt), 0), s):
    the key scheme of the scorer's single batch."""
    key = jax.random.fold_in(jax.random.key(SEED + salt), 0)
    b = jnp.stack([bound(params, x, jax.random.fold_in(key, s)) for s in range(S)])
    return np.asarray(jax.nn.logsumexp(b, 0) - np.log(S), np.float64)

  x = trained.model_inputs(images)
  return dict(trained=trained, others=others, images=images, reference=reference, x=x,
              scorer=scorer, out=scored.scores, seconds=scored.seconds, hand_loglik=hand_loglik)


def _close(a, b, atol=1e-2):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5,
                             atol=atol)


def test_every_row_is_returned_finite_and_oriented_larger_is_ood(setup):
  out = setup["out"]
  for name in baselines.SCORE_NAMES:
    assert out[name].shape == (N,) and np.all(np.isfinite(out[name])), name
    assert evaluation.orientation(name) == 1 and name in setup["seconds"], name
  for name in ("elbo", "lk_k1", "elbo_bpd"):
    assert evaluation.orientation(name) == -1
  assert evaluation.orientation("llr_k1") == 1


def test_iw_nll_is_the_importance_weighted_bound(setup):
  lp = setup["hand_loglik"](setup["trained"].params, setup["x"])
  _close(setup["out"]["iw_nll"], -lp)
  _close(setup["out"]["iw_bpd"], -lp / (784 * np.log(2)), atol=1e-5)


def test_typicality_per_example_and_batch(setup):
  t = setup["trained"]
  h = -np.mean(setup["hand_loglik"](t.params, t.model_inputs(setup["reference"]), salt=1))
  assert setup["scorer"].entropy() == pytest.approx(h, rel=1e-5)
  nll = -setup["hand_loglik"](t.params, setup["x"])
  _close(setup["out"]["typicality"], np.abs(nll - h))
  # Batch mode: random batches of M = 3 of the same set; each example gets its batch's score.
  groups = baselines.batch_groups(N, 3, SEED)
  members = np.concatenate([m for m, _ in groups])
  assert sorted(members) == list(range(N)) and all(len(g) == 3 for _, g in groups)
  for m, g in groups:
    _close(setup["out"]["typicality_batch"][m], abs(nll[g].mean() - h))
  one = baselines.batch_typicality(nll, h, 1)  # M = 1 is the per-example test
  _close(one, np.abs(nll - h), atol=1e-3)


def _png_chunks(data: bytes):
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  i, chunks = 8, []
  while i < len(data):
    (n,), kind = struct.unpack(">I", data[i:i + 4]), data[i + 4:i + 8]
    chunks.append((kind, data[i + 8:i + 8 + n]))
    i += 12 + n
  return chunks


def _png_unfilter(raw: bytes, row_bytes: int, height: int) -> np.ndarray:
  """Undo PNG's per-row filters (types 0-4, one byte per pixel unit as for 1-bit images)."""
  out, prev, i = [], np.zeros(row_bytes, np.int64), 0
  for _ in range(height):
    ftype, line = raw[i], np.frombuffer(raw[i + 1:i + 1 + row_bytes], np.uint8).astype(np.int64)
    i += 1 + row_bytes
    cur = np.zeros(row_bytes, np.int64)
    for j in range(row_bytes):
      a = cur[j - 1] if j else 0
      b, c = prev[j], (prev[j - 1] if j else 0)
      p = a + b - c
      pred = [0, a, b, (a + b) // 2,
              a if abs(p - a) <= min(abs(p - b), abs(p - c)) else (b if abs(p - b) <= abs(p - c)
                                                                    else c)][ftype]
      cur[j] = (line[j] + pred) % 256
    out.append(cur)
    prev = cur
  return np.stack(out).astype(np.uint8)


def test_compressed_lengths_in_bits_per_dim_and_complexity_scores(setup):
  x = setup["x"]  # binarized {0, 1} model input
  for i in range(2):
    with io.BytesIO() as f:
      Image.fromarray(x[i, ..., 0].astype(bool)).save(f, format="PNG", compress_level=9)
      data = f.getvalue()
    # It is a lossless 1-bit greyscale PNG of exactly this image (decoded here by hand).
    chunks = _png_chunks(data)
    width, height, depth, colour = struct.unpack(">IIBB", dict(chunks)[b"IHDR"][:10])
    assert (width, height, depth, colour) == (28, 28, 1, 0)
    raw = zlib.decompress(b"".join(c for k, c in chunks if k == b"IDAT"))
    bits = np.unpackbits(_png_unfilter(raw, 4, 28), axis=1)[:, :28]
    np.testing.assert_array_equal(bits, x[i, ..., 0])
    assert setup["out"]["png_bpd"][i] == pytest.approx(8 * len(data) / 784)
  rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  with io.BytesIO() as f:
    Image.fromarray(rgb[1]).save(f, format="PNG", compress_level=9)
    assert baselines.compressed_bits_per_dim(rgb, "png")[1] == pytest.approx(8 * f.tell() / 192)
  # JPEG 2000: a lossless J2K codestream (decoded back to the very pixels) of that length.
  for img, expected in ((x[0], setup["out"]["jp2_bpd"][0]),
                        (rgb[1], baselines.compressed_bits_per_dim(rgb, "jp2")[1])):
    px = img.astype(np.uint8)
    with io.BytesIO() as f:
      Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px).save(
          f, format="JPEG2000", irreversible=False, no_jp2=True)
      data = f.getvalue()
    assert data[:4] == b"\xff\x4f\xff\x51"  # SOC + SIZ markers: a bare codestream
    decoded = np.asarray(Image.open(io.BytesIO(data))).reshape(px.shape)
    np.testing.assert_array_equal(decoded, px)
    assert expected == pytest.approx(8 * len(data) / px.size)
  with pytest.raises(ValueError, match="unknown codec"):
    baselines.compressed_bits_per_dim(rgb, "flif")
  with mock.patch("PIL.features.check", return_value=False), \
       pytest.raises(RuntimeError, match="without OpenJPEG"):
    baselines.compressed_bits_per_dim(rgb, "jp2")
  # Serrà et al.'s S = -log2 p_M / D - L: model bits/dim minus compressed bits/dim.
  lp = setup["hand_loglik"](setup["trained"].params, x)
  for codec in baselines.CODECS:
    _close(setup["out"][f"complexity_{codec}"],
           -lp / (784 * np.log(2)) - setup["out"][f"{codec}_bpd"], atol=1e-4)


def test_background_llr_is_the_difference_of_the_two_models_bounds(setup):
  lp = setup["hand_loglik"](setup["trained"].params, setup["x"])
  lp_bg = setup["hand_loglik"](setup["others"][0].params, setup["x"])
  _close(setup["out"]["bg_llr"], lp_bg - lp, atol=5e-2)


def test_waic_is_mean_minus_variance_over_the_ensemble(setup):
  lps = np.stack([setup["hand_loglik"](m.params, setup["x"])
                  for m in (setup["trained"], setup["others"][1])])
  _close(setup["out"]["neg_waic"], -(lps.mean(0) - lps.var(0)), atol=0.5)
  _close(baselines.waic(np.array([[1.0, 2.0], [3.0, 6.0]])), [2.0 - 1.0, 4.0 - 4.0], atol=1e-6)


def test_likelihood_regret_is_an_adam_refit_of_the_encoder_per_example(setup):
  t, scorer = setup["trained"], setup["scorer"]
  regret = scorer.regret_fn
  x, key = setup["x"][:32], jax.random.key(5)  # the scorer's compiled regret batch (32)
  r0, before, _ = regret(t.params, x, key, 0)
  _close(r0, np.zeros(32), atol=1e-5 * float(np.abs(before).max()))
  steps = 10
  reg, before, after = map(np.asarray, regret(t.params, x, key, steps))
  _close(reg, after - before, atol=1e-6)
  # Xiao et al. eq. 3 by hand for example 0: Adam (Kingma & Ba 2015, lr 2e-4, b1 0.9, b2 0.999,
  # eps 1e-8) on -ELBO + L2 weight decay 5e-5 over the q_ parameters only, step i drawing its
  # posterior sample with fold_in(k_opt, i); then the same-sample S = 2 bound before and after.
  keys = jax.random.split(key, 32)
  k_opt, k_eval = jax.random.split(keys[0])
  enc, dec = baselines.split_encoder(t.params)
  grad = jax.jit(jax.grad(lambda e, k: -objectives.bound(
      t.model.apply({"params": {**dec, **e}}, x[:1], k))[0]))
  m = jax.tree_util.tree_map(jnp.zeros_like, enc)
  v = jax.tree_util.tree_map(jnp.zeros_like, enc)
  for i in range(steps):
    g = jax.tree_util.tree_map(lambda g, p: g + 5e-5 * p, grad(enc, jax.random.fold_in(k_opt, i)),
                               enc)
    m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
    v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
    enc = jax.tree_util.tree_map(
        lambda p, m, v: p - 2e-4 * (m / (1 - 0.9 ** (i + 1)))
        / (jnp.sqrt(v / (1 - 0.999 ** (i + 1))) + 1e-8), enc, m, v)
  ll = lambda p: float(baselines.log_likelihood(t.model, p, x[:1], k_eval, S)[0])
  hand = ll({**dec, **enc}) - ll(t.params)
  assert abs(hand) > 0.5, hand  # the refit moves the bound well beyond the tolerance below
  # vmapped over 32 examples and one example alone agree with the hand refit (batched and
  # unbatched convolutions round differently).
  _close(reg[0], hand, atol=5e-2)
  one = np.asarray(regret.with_keys(t.params, x[1:2], keys[1:2], steps)[0])
  _close(reg[1:2], one, atol=5e-2)
  # Refitting the encoder to x helps here: regret >= ~0 (an S = 2 bound, same samples before
  # and after, so a few examples may dip slightly below 0).
  assert np.mean(reg) > 0 and np.mean(reg > -1.0) >= 0.9, reg
  with pytest.raises(ValueError, match="steps must be >= 0"):
    regret(t.params, x, key, -1)
  with pytest.raises(ValueError, match="regret needs steps >= 0"):
    baselines.BaselineOptions(regret_lr=0.0)
  with pytest.raises(ValueError, match="iw_samples must be >= 1"):
    baselines.BaselineOptions(iw_samples=0)
  # Only the inference network moves: the decoder gets no gradient through infer().
  enc, dec = baselines.split_encoder(t.params)
  assert set(enc) | set(dec) == set(t.params) and all(k.startswith("q_") for k in enc)
  g = jax.jit(jax.grad(lambda p: sum(jnp.sum(q.mean) for q in t.model.apply(
      {"params": p}, x[:2], key, method=t.model.infer))))(t.params)
  assert all(float(jnp.abs(v).sum()) == 0 for k in dec for v in jax.tree_util.tree_leaves(g[k]))


def test_scores_parsing_and_reference_set_is_disjoint_from_scored_train_set():
  assert baselines.parse_scores("paper") == ()
  assert baselines.parse_scores("all") == tuple(baselines.FAMILIES)
  assert baselines.parse_scores("paper,regret,typicality_batch") == ("regret", "typicality")
  with pytest.raises(ValueError, match="unknown score"):
    baselines.parse_scores("elbo,nope")
  train = np.arange(100, dtype=np.uint8)[:, None, None, None]
  scored = evaluation.limit(train, 30, 7)[:, 0, 0, 0]
  ref = baselines.reference_indices(100, 30, 40, 7)
  assert len(ref) == 40 and not set(ref) & set(scored)


def test_perturbation_replaces_pixels_at_the_rate_with_uniform_noise():
  x = jnp.full((50, 28, 28, 1), 7, jnp.uint8)
  assert np.array_equal(preprocess.perturb(jax.random.key(0), x, 0.0), x)
  p = np.asarray(preprocess.perturb(jax.random.key(0), x, 0.25))
  assert p.dtype == np.uint8
  # a replaced pixel keeps its value with probability 1/256
  assert abs(np.mean(p != 7) - 0.25 * 255 / 256) < 0.01
  noise = p[p != 7].astype(np.float64)
  assert abs(noise.mean() - 127.5) < 3 and noise.min() < 5 and noise.max() > 250
  assert not np.array_equal(p, np.asarray(preprocess.perturb(jax.random.key(1), x, 0.25)))
  with pytest.raises(TypeError, match="uint8"):
    preprocess.perturb(jax.random.key(0), x.astype(jnp.float32), 0.1)


def _train(workdir, seed, perturb_rate=0.0):
  c = tiny_config()
  c.seed = seed
  c.train.max_steps = 10
  c.train.sample_grid = 0
  c.data.perturb_rate = perturb_rate
  training.train_and_evaluate(c, workdir)
  return workdir


def test_auxiliary_runs_are_found_in_the_reproduce_baselines_layout(tmp_path):
  for d in ("run", "run_bg", "run_seed2", "run_seed10", "run_seed1", "run_seedx", "other_seed4"):
    (tmp_path / d).mkdir()
  (tmp_path / "run_seed3").write_text("a file, not a run")
  run = str(tmp_path / "run")
  assert baselines.auxiliary_runs(run + "/") == (
      run + "_bg", [run + "_seed1", run + "_seed2", run + "_seed10"])
  assert baselines.auxiliary_runs(str(tmp_path / "other")) == (None, [str(tmp_path / "other_seed4")])
  assert baselines.auxiliary_runs(str(tmp_path / "missing" / "run")) == (None, [])


def test_evaluate_cli_scores_all_writes_every_row(tiny_workdir, tmp_path):
  # The background model sits where scripts/reproduce_baselines.sh puts it (found without a
  # flag); the ensemble member is passed with --ensemble_checkpoints.
  run = tmp_path / "run"
  os.symlink(tiny_workdir, run)
  bg = _train(str(tmp_path / "run_bg"), 0, perturb_rate=0.2)
  ens = _train(str(tmp_path / "ens"), 1)
  out = tmp_path / "eval"
  env = dict(os.environ, HVAE_DATA_DIR=DATA_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_COMPILATION_CACHE_DIR=os.environ.get(
                 "HVAE_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "hvae_jax_test_cache")))
  args = [sys.executable, os.path.join(REPO, "evaluate.py"), f"--workdir={run}",
          "--ood=mnist", "--scores=all", "--max_examples=64", "--batch_size=64",
          f"--ensemble_checkpoints={ens}",
          "--baseline_iw_samples=2", "--regret_steps=2", "--typicality_batch=8", f"--output={out}"]
  r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                     check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mnist_test regret" in r.stderr  # a progress bar per pass: regret takes minutes
  res = json.loads((out / "results.json").read_text())
  m = res["ood"]["mnist"]["metrics"]
  assert set(m) >= set(baselines.SCORE_NAMES) | {"elbo", "llr_k1"}
  assert all(0.0 <= v["auroc"] <= 1.0 for v in m.values())
  speed = res["examples_per_s"]
  assert all(speed[n] and speed[n] > 0 for n in list(baselines.SCORE_NAMES) + ["llr_k1"])
  assert res["extra_scores_settings"]["ensemble"][1] == ens
  assert res["extra_scores_settings"]["background"] == bg and f"bg_llr uses {bg}" in r.stdout
  table = (out / "results.md").read_text()
  assert "examples/s" in table and all(f"| {n} |" in table for n in baselines.SCORE_NAMES)
  assert (out / "baselines_mnist_test.npz").exists()
