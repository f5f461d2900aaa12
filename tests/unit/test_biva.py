"""BIVA: shapes, finite terms, gradients, the per-layer prior switch over both streams, the
model-agnostic OOD scores, training, data parallelism and the reference size.

All but the parameter-count test use a TINY BIVA (3 layers, one 8-channel block each) built
here. XLA's CPU compile time dominates on such a model, so every function is jitted once and
compiled with backend optimisation level 0 (`_compile`): several times faster compiles.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from hvae_jax import layers, objectives, ood, preprocess, sharding, training
from hvae_jax.layers import count_params
from hvae_jax.models import build_model
from tests.helpers import check_terms_sum_back, fmnist_slice, tiny_config

# 28x28 -> 14x14 (layer 1) -> 7x7 (layer 2) -> 7x7 (layer 3): the TD blocks of layers 1-2 see
# h^BU through transposed aux convs; hvae-oodd's wiring (the default) drops the same-shape
# skips of layer 3 and the generative stacks, biva-pytorch's adds them as 1x1 convs.
TINY_BLOCKS = (((8, 3, 2),), ((8, 3, 2),), ((8, 3, 1),))
TINY_LATENTS = (("conv", 2), ("conv", 3), ("dense", 2))
# (bu_1, td_1, bu_2, td_2, z_3)
TINY_KL_SHAPES = [(4, 14, 14, 2), (4, 14, 14, 2), (4, 7, 7, 3), (4, 7, 7, 3), (4, 2)]
FAST = {"xla_backend_optimization_level": 0}


def _compile(fn, *args):
  """`fn` (jitted or not) compiled for `args` with fast (unoptimised) XLA compilation."""
  fn = fn if hasattr(fn, "lower") else jax.jit(fn)
  return fn.lower(*args).compile(FAST)


def tiny_biva_config(**overrides):
  c = tiny_config(**overrides)
  c.model.name = "biva"
  c.model.blocks = TINY_BLOCKS
  c.model.latents = TINY_LATENTS
  c.train.warmup_epochs = 0.0  # beta = 1 and no free bits: the training loss is -ELBO
  c.train.free_bits = 0.0
  c.train.learning_rate = 3e-3
  c.model.upsample = "transpose"  # compiles faster than 'subpixel' (the same function)
  return c


def _x(n=4):
  return preprocess.eval_binarize(fmnist_slice(n), 0)


def _x_init():
  return preprocess.eval_binarize(fmnist_slice(64, "train"), 0)


@functools.lru_cache(maxsize=None)
def _tiny():
  model = build_model(tiny_biva_config(), (28, 28, 1))
  args = (_kernels(model, _x_init()), _x_init(), jax.random.key(1))
  return model, _compile(functools.partial(layers.data_dependent_init, model), *args)(*args)


def _kernels(model, x_init):
  return layers.draw_kernels(model, jax.random.key(0), x_init, jax.random.key(1))


def test_output_shapes_finite_and_latent_layers():
  model, params = _tiny()
  assert model.latent_layers == (1, 1, 2, 2, 3)

  def run(params, x, key):
    v = {"params": params}
    return (model.apply(v, x, key), model.apply(v, key, 5, method=model.sample),
            model.apply(v, x[:3], key, 1, method=model.reconstruct))

  args = (params, _x(), jax.random.key(0))
  out, imgs, rec = _compile(run, *args)(*args)
  assert out.log_px.shape == (4,)
  assert [k.shape for k in out.kl] == TINY_KL_SHAPES
  assert all(bool(jnp.all(jnp.isfinite(k))) for k in out.kl)
  assert bool(jnp.all(out.log_px < 0)) and bool(jnp.all(jnp.isfinite(out.log_px)))
  # Untrained, data-dependently initialised: about one bit per pixel.
  bpd = float(jnp.mean(objectives.bits_per_dim(out.log_px, (28, 28, 1))))
  assert 0.5 < bpd < 2.0, bpd
  assert imgs.shape == (5, 28, 28, 1) and float(imgs.min()) >= 0 and float(imgs.max()) <= 1
  assert rec.shape == (3, 28, 28, 1) and bool(jnp.all(jnp.isfinite(rec)))


def test_mean_kl_of_every_latent_is_non_negative():
  """The MC KL can be negative per sample; its average over samples must not be."""
  model, params = _tiny()
  fn = jax.vmap(lambda p, k, x: objectives.kl_per_latent(model.apply({"params": p}, x, k)),
                (None, 0, None))
  args = (params, jax.random.split(jax.random.key(0), 64), _x(4))
  kls = _compile(fn, *args)(*args)
  assert kls.shape == (64, 4, 5)
  assert bool(jnp.all(kls.mean(0) > -0.05)), kls.mean(0)


def test_n_skip_puts_both_streams_of_the_k_lowest_layers_on_the_prior():
  model, params = _tiny()
  x, key = _x(), jax.random.key(3)

  def run(params, x, key):
    """As ood.py: one bottom-up pass, the top-down pass vmapped over a traced k."""
    v = {"params": params}
    k_q, k_p = jax.random.split(key)
    post = model.apply(v, x, k_q, method=model.infer)
    per_k = jax.vmap(lambda k: model.apply(v, post, x, k, k_p, method=model.generate))
    return per_k(jnp.arange(3)), model.apply(v, x, key)  # and the plain forward pass

  args = (params, x, key)
  outs, fwd = _compile(run, *args)(*args)
  kl = [np.asarray(a) for a in outs.kl]  # each [k, batch, ...]
  layers = np.asarray(model.latent_layers)
  for k in (1, 2):
    for j, layer in enumerate(layers):
      if layer <= k:  # both BU and TD latents of the k lowest layers: on the prior, KL zeroed
        assert np.abs(kl[j][k]).max() == 0.0, (k, j)
      else:  # layers above k: same posterior sample and KL as in the ELBO pass
        np.testing.assert_allclose(kl[j][k], kl[j][0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(outs.log_px[0], outs.log_px[k])
  # L^{>0} is the ELBO: the k = 0 pass equals the plain forward pass.
  np.testing.assert_allclose(outs.log_px[0], fwd.log_px, rtol=1e-5, atol=1e-3)
  for j in range(len(layers)):
    np.testing.assert_allclose(kl[j][0], fwd.kl[j], rtol=1e-5, atol=1e-5)
  elbo = fwd.log_px - sum(a.reshape(4, -1).sum(-1) for a in fwd.kl)
  np.testing.assert_allclose(objectives.bound(fwd), elbo, rtol=1e-6)


def test_skip_mode_sample_draws_the_lower_layers():
  model, params = _tiny()
  m = model.clone(skip_mode="sample")

  def run(params, x, key):
    v = {"params": params}
    post = m.apply(v, x, key, method=m.infer)
    return [objectives.bound(m.apply(v, post, x, 2, jax.random.fold_in(key, i),
                                     method=m.generate)) for i in range(2)]

  args = (params, _x(), jax.random.key(0))
  a, b = _compile(run, *args)(*args)
  assert bool(jnp.all(jnp.isfinite(a))) and not np.allclose(a, b)


def test_ood_scores_run_unchanged():
  model, params = _tiny()
  assert ood.max_k(model) == 2
  args = (params, _x(6), jax.random.key(0))
  fn = ood.make_score_fn(model, iw_samples_elbo=2, iw_samples_lk=2)  # vmap over k, IW S=2
  s = _compile(fn, *args)(*args)
  assert s["elbo"].shape == (6,) and s["lk"].shape == (2, 6) and s["llr"].shape == (2, 6)
  for name in ("elbo", "lk", "llr", "elbo_bpd", "lk_bpd"):
    assert bool(jnp.all(jnp.isfinite(s[name]))), name
  np.testing.assert_allclose(s["llr"], s["elbo"][None] - s["lk"], rtol=1e-6)


def test_per_layer_terms_of_both_streams_sum_back_to_every_bound():
  model, params = _tiny()
  names = check_terms_sum_back(model, params, _x(4))
  assert {"kl_l1_bu", "kl_l1_td", "kl_l2_bu", "kl_l2_td", "kl_l3", "kl_k1_l2_bu",
          "kl_k1_l2_td", "kl_k2_l3"} <= set(names)


BATCH = 16  # one batch shape for both training tests: the 1-device step compiles once


@functools.lru_cache(maxsize=None)
def _train_step(n_devices):
  """The tiny BIVA's data-parallel train step over `n_devices`, compiled once per session."""
  model, params = _tiny()
  config = tiny_biva_config()
  mesh = sharding.make_data_mesh(jax.devices()[:n_devices])
  step = training.make_train_step(model, config, steps_per_epoch=100, kind="binary")
  fn = training.make_data_parallel(step, mesh)
  state = _init_state(mesh)
  return mesh, _compile(fn, state, sharding.global_batch(fmnist_slice(BATCH), mesh),
                        jax.random.key(0))


def _init_state(mesh):
  params = _tiny()[1]
  state = training.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      opt_state=training.make_optimizer(tiny_biva_config()).init(params))
  # A copy: the step donates its input state, and the cached params must survive.
  return jax.device_put(jax.tree_util.tree_map(jnp.copy, state), NamedSharding(mesh, P()))


def _train(steps, n_devices, batches, key):
  """`steps` train steps of the tiny BIVA from its initial params; final state, losses."""
  mesh, fn = _train_step(n_devices)
  state = _init_state(mesh)
  batches = [sharding.global_batch(b, mesh) for b in batches]
  losses = []
  for i in range(steps):
    state, metrics = fn(state, batches[i % len(batches)], key)
    losses.append(float(metrics["loss"]))
  return state, losses


def test_training_lowers_the_loss_and_updates_every_parameter():
  images = fmnist_slice(128, "train", seed=1)
  batches = [images[i:i + BATCH] for i in range(0, 128, BATCH)]
  state, losses = _train(30, 1, batches, jax.random.key(0))
  assert all(np.isfinite(losses))
  first, last = np.mean(losses[:4]), np.mean(losses[-4:])
  assert last < first - 30, (first, last)
  # Adam leaves a parameter exactly where it was only if its gradient was always zero.
  init = jax.tree_util.tree_flatten_with_path(_tiny()[1])[0]
  now = jax.tree_util.tree_leaves(state.params)
  frozen = [jax.tree_util.keystr(path) for (path, a), b in zip(init, now)
            if np.array_equal(np.asarray(a), np.asarray(b))]
  assert not frozen, f"no gradient reaches {frozen}"


def test_two_device_step_equals_one_device_step():
  assert len(jax.devices()) >= 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
  batch = fmnist_slice(BATCH)
  results = [_train(3, n, [batch], jax.random.key(0)) for n in (1, 2)]
  for a, b in zip(jax.tree_util.tree_leaves(results[0][0].params),
                  jax.tree_util.tree_leaves(results[1][0].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_dmol_colour_model_with_conditional_bu_prior():
  """A 2-layer colour BIVA whose BU prior is conditioned on z^TD: p(z^BU_i | z^TD_i, z_{>i}).

  Init, forward passes and sampling in one compile (compiles dominate this file).
  """
  c = tiny_biva_config(model__likelihood="dmol", model__biva_variant="biva-pytorch")
  c.model.blocks, c.model.latents = TINY_BLOCKS[:2], (("conv", 3), ("dense", 2))
  model = build_model(c, (32, 32, 3)).clone(conditional_bu=True)

  def run(kernels, x_init, x, key):
    params = layers.data_dependent_init(model, kernels, x_init, jax.random.key(1))
    # The same pass with the conditioning block's weights changed: only p(z^BU_1 | .) moves.
    moved = {**params, "bu_cond_0": jax.tree_util.tree_map(lambda a: 1.5 * a + 0.1,
                                                           params["bu_cond_0"])}
    return (params, model.apply({"params": params}, x, key),
            model.apply({"params": moved}, x, key),
            model.apply({"params": params}, key, 2, method=model.sample))

  rng = np.random.default_rng(0)
  x_init = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  args = (_kernels(model, x_init), x_init,
          rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), jax.random.key(0))
  params, out, moved, imgs = _compile(run, *args)(*args)
  assert "bu_cond_0" in params and "bu_cond_proj_0" not in params  # conv z^TD: no projection
  assert not np.allclose(moved.kl[0], out.kl[0])  # KL of z^BU_1 depends on the BU prior
  for a, b in zip((moved.log_px,) + moved.kl[1:], (out.log_px,) + out.kl[1:]):
    np.testing.assert_array_equal(a, b)  # z^TD_1, z_2 and log p(x|z) do not
  assert out.log_px.shape == (2,) and bool(jnp.all(jnp.isfinite(out.log_px)))
  assert [k.shape for k in out.kl] == [(2, 16, 16, 3)] * 2 + [(2, 2)]
  assert all(bool(jnp.all(jnp.isfinite(k))) for k in out.kl)
  assert imgs.shape == (2, 32, 32, 3) and imgs.dtype == jnp.uint8


# hvae-oodd's BIVA (`--model BIVA`, oodd/layers/stages.py BivaStage, skip_stochastic=True,
# conditional_bu=False) built from the first ten stages of biva-pytorch's get_deep_vae_cifar,
# written the way the hvae-oodd README writes configs (ungated weight-normed ResBlockConv2d,
# GaussianConv2d with its default kernel 3, DiscretizedLogisticMix with 10 components):
# 20,985,976 parameters, counted on the instantiated torch model by bench/ref_biva_params.py.
REF_BIVA_CIFAR_L10 = 20_985_976


def _conv(cin, cout, k):
  return k * k * cin * cout + 2 * cout  # kernel + weight-norm scale + bias


def test_reference_cifar_biva_parameter_count():
  """configs/cifar_biva.py (hvae-oodd's wiring) counts the reference's parameters exactly;
  biva-pytorch's adds the connections hvae-oodd drops, and only those.

  hvae-oodd's blocks ignore an aux input of their own shape and its intermediate stages drop
  the BU skip input; biva-pytorch keeps them all, as 1x1 convs, or a 5x5 transposed conv
  where the generative skip changes resolution. With C = 96, L = 10 (9 intermediate stages):
  """
  from configs import cifar_biva  # pylint: disable=import-outside-toplevel

  def count(variant):
    c = cifar_biva.get_config()
    c.model.biva_variant = variant
    model = build_model(c, (32, 32, 3))
    return count_params(jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((2, 32, 32, 3), jnp.uint8), jax.random.key(0)))["params"])

  assert count("hvae-oodd") == REF_BIVA_CIFAR_L10
  c = 96
  extra = (8 * 3 * _conv(2 * c, c, 1)    # BU skip [h_BU, h_TD] of the stage below, stages 2-9
           + 9 * 3 * _conv(c, c, 1)      # TD blocks see h_BU at the same size, stages 2-10
           + 9 * _conv(c, c, 1)          # TD merge sees the top-down state d_{i+1}
           + 8 * 3 * _conv(c, c, 1)      # generative skips, stages 2-9
           + _conv(c, c, 1) + 2 * _conv(c, c, 5))  # stage 1: one 1x1, two 16->32 upsampling
  assert extra == 1_482_048
  assert count("biva-pytorch") == REF_BIVA_CIFAR_L10 + extra


def test_config_errors():
  x = _x(2)
  c = tiny_biva_config()
  with pytest.raises(ValueError, match="conditional_bu is a biva-pytorch option"):
    jax.eval_shape(lambda: build_model(c, (28, 28, 1)).clone(conditional_bu=True).init(
        jax.random.key(0), x, jax.random.key(0)))
  for blocks, latents, match in ((TINY_BLOCKS, TINY_LATENTS[:2], "latent spec per BIVA layer"),
                                 (TINY_BLOCKS[:1], TINY_LATENTS[:1], "at least 2 layers")):
    c = tiny_biva_config()
    c.model.blocks, c.model.latents = blocks, latents
    model = build_model(c, (28, 28, 1))
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(lambda: model.init(jax.random.key(0), x, jax.random.key(0)))
