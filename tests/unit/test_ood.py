"""OOD scores: L^{>0} is the ELBO, vmap over k equals a loop, IW bounds, chunking, bounded
passes in flight."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvae_jax import (config as config_lib, image_keys, objectives, ood, preprocess, sharding,
                      trained)
from tests.helpers import check_terms_sum_back, fmnist_slice, tiny_model_and_params


def _setup(n=6):
  model, params = tiny_model_and_params()
  return model, params, preprocess.eval_binarize(fmnist_slice(n), 0)


def test_l0_equals_elbo_and_vmap_over_k_equals_loop():
  model, params, x = _setup()
  key = jax.random.key(7)
  got = ood.bounds_one_sample(model, params, x, key, jnp.arange(3))  # k = 0, 1, 2
  k_q, k_p = jax.random.split(key)
  v = {"params": params}
  post = model.apply(v, x, k_q, method=model.infer)
  for k in range(3):
    ref = objectives.bound(model.apply(v, post, x, k, k_p, method=model.generate))
    np.testing.assert_allclose(got[k], ref, rtol=1e-5, atol=1e-3)
  # L^{>0} through the plain forward pass is the ELBO.
  elbo = objectives.bound(model.apply(v, x, key))
  np.testing.assert_allclose(got[0], elbo, rtol=1e-5, atol=1e-3)


def test_scores_shapes_and_llr_definition():
  model, params, x = _setup()
  s = ood.make_score_fn(model)(params, x, jax.random.key(0))
  assert s["elbo"].shape == (6,) and s["lk"].shape == (2, 6)
  np.testing.assert_allclose(s["llr"], s["elbo"][None] - s["lk"], rtol=1e-6)
  np.testing.assert_allclose(s["elbo_bpd"], -s["elbo"] / (784 * np.log(2)), rtol=1e-5)


def test_iw_with_one_sample_is_the_single_sample_bound():
  model, params, x = _setup()
  key = jax.random.key(1)
  iw = ood.iw_bounds(model, params, x, key, (0, 1), iw_samples=1)
  one = ood.bounds_one_sample(model, params, x, jax.random.fold_in(key, 0), jnp.asarray([0, 1]))
  np.testing.assert_allclose(iw, one, rtol=1e-5, atol=1e-3)


def test_chunked_iw_equals_unchunked():
  model, params, x = _setup()
  key = jax.random.key(2)
  full = ood.iw_bounds(model, params, x, key, (0, 1, 2), iw_samples=12, chunk_size=12)
  for chunk in (5, 4, 1):  # 5 leaves a padded last chunk that must weigh nothing
    got = ood.iw_bounds(model, params, x, key, (0, 1, 2), iw_samples=12, chunk_size=chunk)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-3)


def test_iw_bound_increases_with_samples_in_expectation():
  model, params, x = _setup(8)
  means = []
  for s in (1, 4, 32):
    fn = jax.jit(lambda key, s=s: ood.iw_bounds(model, params, x, key, (0,), s, chunk_size=16))
    means.append(float(jnp.mean(jnp.stack([fn(jax.random.key(r)) for r in range(3)]))))
  assert means[0] < means[1] < means[2], means


def test_score_fn_rejects_bad_k():
  model, params, x = _setup()
  with pytest.raises(ValueError, match="k must lie"):
    ood.scores(model, params, x, jax.random.key(0), ks=(3,))


def test_reference_inference_mode_uses_posterior_means_below_k():
  """skip_inference='mean' (ood-llr.py): z_{<=k} enters the bottom-up pass at its posterior
  mean; the ELBO is unchanged and L^{>k} is the bound over those posteriors."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  model, params, x = _setup()
  ref_model = dataclasses.replace(model, skip_inference="mean")
  key = jax.random.key(3)
  ks = jnp.arange(3)
  sampled = ood.bounds_one_sample(model, params, x, key, ks)
  got = ood.bounds_one_sample(ref_model, params, x, key, ks)
  np.testing.assert_allclose(got[0], sampled[0], rtol=1e-6)
  k_q, k_p = jax.random.split(key)
  v = {"params": params}
  for k in (1, 2):
    post = ref_model.apply(v, x, k_q, k, method=ref_model.infer)
    free = model.apply(v, x, k_q, method=model.infer)
    for i, (q, q_free) in enumerate(zip(post, free)):
      if i < k:
        np.testing.assert_array_equal(q.z, q.mean)
      else:  # the layers above see other inputs but draw the same noise
        np.testing.assert_allclose((q.z - q.mean) / q.std, (q_free.z - q_free.mean) / q_free.std,
                                   rtol=1e-4, atol=1e-4)
    want = objectives.bound(ref_model.apply(v, post, x, k, k_p, method=ref_model.generate))
    np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-3)
    assert not np.allclose(got[k], sampled[k])  # the option does change L^{>k}


def test_no_key_puts_every_latent_at_its_mean():
  model, params, x = _setup()
  v = {"params": params}
  post = model.apply(v, x, None, method=model.infer)
  assert all(np.array_equal(q.z, q.mean) for q in post)
  a = objectives.bound(model.apply(v, x, None, 1))
  b = objectives.bound(model.apply(v, x, None, 1))
  np.testing.assert_array_equal(a, b)
  sampled = model.clone(skip_mode="sample")  # no key: the prior mean even in 'sample' mode
  np.testing.assert_allclose(objectives.bound(sampled.apply(v, x, None, 1)), a, rtol=1e-6)


def test_per_layer_terms_sum_back_to_every_bound():
  model, params, x = _setup()
  s = check_terms_sum_back(model, params, x)
  assert {"recon", "kl_l1", "kl_l2", "kl_l3", "recon_k1", "kl_k1_l2", "kl_k1_l3", "recon_k2",
          "kl_k2_l3"} <= set(s)


def test_importance_weighted_terms_are_the_weighted_mean_of_the_samples():
  """With S samples each term is sum_s w_s t_s, w = softmax(L_s): chunking does not change it,
  and the terms' sum is the weighted mean bound: log mean exp L_s + log S - H(w) >= the IW
  bound, since the weights' entropy H(w) <= log S."""
  model, params, x = _setup(3)
  key = jax.random.key(3)
  b, t = ood.iw_terms(model, params, x, key, (0, 1), iw_samples=5, chunk_size=2)
  keys = [jax.random.fold_in(key, i) for i in range(5)]
  one = jnp.stack([ood.terms_one_sample(model, params, x, k, jnp.asarray([0, 1])) for k in keys])
  w = jax.nn.softmax(ood.bound_of(one), axis=0)[..., None]
  np.testing.assert_allclose(t, (w * one).sum(0), rtol=1e-4, atol=1e-3)  # float32 mixing
  assert bool(jnp.all(ood.bound_of(t) >= b - 1e-3))


def test_sequential_groups_fit_the_bound_and_keep_the_device_split():
  for batch, devices, per_image, max_passes in [(500, 1, 4, 256), (500, 2, 4, 256),
                                                (100, 2, 30, 256), (12, 2, 3, 7), (7, 1, 5, 1)]:
    g = ood.sequential_groups(batch, devices, per_image, max_passes)
    per_device = batch // devices
    assert per_device % g == 0  # equal groups, each split evenly over the devices
    group = batch // g
    assert group * per_image <= max_passes or group == devices  # one image per device at worst
    fewer = [h for h in range(1, g) if per_device % h == 0]
    assert all(devices * (per_device // h) * per_image > max_passes for h in fewer)  # fewest
  assert ood.sequential_groups(500, 1, 4, 0) == 1  # 0: no bound
  assert ood.sequential_groups(50, 1, 4, 1000) == 1  # fits: one group


def test_bounded_passes_give_the_same_per_image_scores():
  """Scoring a batch in groups one after another (max_passes) changes no image's scores: each
  image has its own key. On every device of the test session (2 with the test command)."""
  model, params = tiny_model_and_params()
  images = fmnist_slice(8)
  x = preprocess.eval_binarize(images, 0)
  keys = image_keys.key_data(images, 0)
  mesh = sharding.make_data_mesh()
  xs, ks_ = sharding.global_batch(np.asarray(x), mesh), sharding.global_batch(keys, mesh)
  for iw_e, iw_l in ((1, 1), (3, 1)):
    kw = dict(ks=(1, 2), iw_samples_elbo=iw_e, iw_samples_lk=iw_l, chunk_size=2)
    per_image = ood.passes_per_image(kw["ks"], iw_e, iw_l, 2)
    assert ood.sequential_groups(8, mesh.size, per_image, 2 * per_image) > 1  # really in groups
    full = ood.make_image_score_fn(model, **kw)(params, xs, ks_)
    grouped = ood.make_image_score_fn(model, **kw, max_passes=2 * per_image,
                                      devices=mesh.size)(params, xs, ks_)
    assert set(grouped) == set(full)
    for name in full:
      np.testing.assert_allclose(np.asarray(grouped[name]), np.asarray(full[name]), rtol=1e-5,
                                 atol=1e-4, err_msg=name)


def test_max_passes_setting_automatic_explicit_or_none():
  cpu = jax.default_backend() == "cpu"
  assert trained.max_passes_for(0) == (trained.CPU_MAX_PASSES if cpu else 0)  # automatic
  assert trained.max_passes_for(100) == 100 and trained.max_passes_for(-1) == 0  # -1: no bound
  c = config_lib.base_config()
  c.eval.max_passes = -2
  with pytest.raises(ValueError, match="eval.max_passes must be an integer >= -1"):
    config_lib.validate(c)
