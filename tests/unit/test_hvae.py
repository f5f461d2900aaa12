"""The HVAE: shapes, finite terms, gradients to every parameter, the prior switch, sampling."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hvae_jax import layers, objectives, preprocess
from hvae_jax.config import base_config
from hvae_jax.layers import WNConv, WNDense, conv2d_same, count_params
from hvae_jax.models import build_model
from tests.helpers import fmnist_slice, tiny_config, tiny_model_and_params


def _x(n=4):
  return preprocess.eval_binarize(fmnist_slice(n), 0)


def test_output_shapes_and_finite():
  model, params = tiny_model_and_params()
  out = model.apply({"params": params}, _x(), jax.random.key(0))
  assert out.log_px.shape == (4,)
  assert [k.shape for k in out.kl] == [(4, 14, 14, 2), (4, 4), (4, 2)]
  assert all(bool(jnp.all(jnp.isfinite(k))) for k in out.kl)
  assert bool(jnp.all(out.log_px < 0))


def test_untrained_reconstruction_bits_per_dim_in_expected_range():
  model, params = tiny_model_and_params()
  out = model.apply({"params": params}, _x(16), jax.random.key(0))
  bpd = float(jnp.mean(objectives.bits_per_dim(out.log_px, (28, 28, 1))))
  # Data-dependent init gives logits of unit scale: about 1 bit/dim (a coin flip per pixel).
  assert 0.5 < bpd < 2.0, bpd
  assert float(jnp.mean(objectives.bound(out))) < float(jnp.mean(out.log_px))


def test_mean_kl_is_non_negative():
  """The MC KL can be negative per sample; its average over samples must not be."""
  model, params = tiny_model_and_params()
  x = _x(4)
  kls = jax.jit(jax.vmap(lambda k: objectives.kl_per_latent(
      model.apply({"params": params}, x, k))))(jax.random.split(jax.random.key(0), 256))
  assert bool(jnp.all(kls.mean(0) > -0.05)), kls.mean(0)


def test_n_skip_zeroes_lower_kl_and_changes_bound():
  model, params = tiny_model_and_params()
  x = _x()
  key = jax.random.key(3)
  out0 = model.apply({"params": params}, x, key, 0)
  out2 = model.apply({"params": params}, x, key, 2)
  assert float(jnp.abs(out2.kl[0]).max()) == 0.0 and float(jnp.abs(out2.kl[1]).max()) == 0.0
  np.testing.assert_allclose(out2.kl[2], out0.kl[2], rtol=1e-5, atol=1e-5)  # top layer unchanged
  assert not np.allclose(out0.log_px, out2.log_px)


def test_gradient_reaches_every_parameter():
  model, params = tiny_model_and_params()
  x = _x()

  def loss(p):
    return objectives.training_loss(model.apply({"params": p}, x, jax.random.key(0)), 1.0, 0.0)[0]

  grads = jax.grad(loss)(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(path) for path, g in flat if float(jnp.abs(g).max()) == 0.0]
  assert not dead, f"no gradient reaches {dead}"


def test_sample_and_reconstruct():
  model, params = tiny_model_and_params()
  imgs = model.apply({"params": params}, jax.random.key(0), 5, method=model.sample)
  assert imgs.shape == (5, 28, 28, 1) and float(imgs.min()) >= 0 and float(imgs.max()) <= 1
  rec = model.apply({"params": params}, _x(3), jax.random.key(0), 1, method=model.reconstruct)
  assert rec.shape == (3, 28, 28, 1)


def test_subpixel_and_transpose_upsampling_are_the_same_function():
  c1, c2 = tiny_config(model__upsample="subpixel"), tiny_config(model__upsample="transpose")
  m1, p = tiny_model_and_params(c1)
  m2 = build_model(c2, (28, 28, 1))
  x = _x()
  a = m1.apply({"params": p}, x, jax.random.key(0))
  b = m2.apply({"params": p}, x, jax.random.key(0))
  np.testing.assert_allclose(a.log_px, b.log_px, rtol=1e-4)


def test_dmol_colour_model():
  c = tiny_config(model__likelihood="dmol")
  c.model.blocks = (((8, 3, 2),), ((8, 3, 2),), ((8, 3, 2),))
  model, params = tiny_model_and_params(c, (32, 32, 3))
  x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  out = model.apply({"params": params}, x, jax.random.key(0))
  assert out.log_px.shape == (2,) and bool(jnp.all(jnp.isfinite(out.log_px)))
  imgs = model.apply({"params": params}, jax.random.key(0), 2, method=model.sample)
  assert imgs.shape == (2, 32, 32, 3) and imgs.dtype == jnp.uint8


def test_reference_fmnist_parameter_count():
  """hvae-oodd's FashionMNIST HVAE has 2.62 M parameters (shared/bench/ref_torch_results.md)."""
  model = build_model(base_config(), (28, 28, 1))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                             jax.random.key(0)))
  n = count_params(shapes["params"])
  assert abs(n - 2.62e6) / 2.62e6 < 0.03, n


def test_bad_strides_give_clear_error():
  c = tiny_config()
  c.model.blocks = (((8, 3, 3),), ((8, 3, 2),), ((8, 3, 1),))
  with pytest.raises(ValueError, match="does not divide"):
    tiny_model_and_params(c)


def test_head_activations_are_knobs():
  """latent_/likelihood_activation change the function, not the parameters (the shipped small
  model keeps its 'elu' / 'leaky_relu' under the same parameter tree)."""
  model, params = tiny_model_and_params()
  x = _x()
  base = objectives.bound(model.apply({"params": params}, x, None))
  for field in ("latent_activation", "likelihood_activation"):
    other = model.clone(**{field: "swish"})
    assert not np.allclose(objectives.bound(other.apply({"params": params}, x, None)), base)


@pytest.mark.parametrize("layer", ["conv", "conv_transpose", "dense"])
def test_weight_norm_scales_the_kernel_as_the_output_scaled_form(layer):
  """After init, g scales the kernel (the reference's form, cheaper on CPU); the function and
  its gradients equal conv(x, v / ||v||) * g + b, the form the data-dependent init uses."""
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  mod = {"conv": WNConv(5, 3, 2), "conv_transpose": WNConv(5, 3, 2, True, "subpixel"),
         "dense": WNDense(5)}[layer]
  params = mod.init(jax.random.key(1), x)["params"]
  params = {**params, "scale": params["scale"] * jnp.linspace(0.5, 2.0, 5)}

  def output_scaled(p, x):
    v = p["kernel"]
    d = v / jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))
    if layer == "conv":
      y = conv2d_same(x, d, 2)
    elif layer == "dense":
      y = x.reshape(x.shape[0], -1) @ d
    else:
      y = jax.lax.conv_transpose(x, d, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y * p["scale"] + p["bias"]

  loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p, x)))
  got = mod.apply({"params": params}, x)
  np.testing.assert_allclose(got, output_scaled(params, x), rtol=1e-5, atol=1e-5)
  g_got = jax.grad(loss(lambda p, x: mod.apply({"params": p}, x)))(params)
  g_want = jax.grad(loss(output_scaled))(params)
  for k in params:
    np.testing.assert_allclose(g_got[k], g_want[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 5, 64, 128), (3, 3, 1, 8), (784, 16)])
def test_kernel_init_is_flax_he_normal(shape):
  key = jax.random.key(3)
  np.testing.assert_allclose(layers.kernel_init(key, shape),
                             nn.initializers.he_normal()(key, shape), rtol=1e-6, atol=1e-7)


class _TwoLayers(nn.Module):
  """A conv then a dense layer, called as the models are: `(x, sample_key)`."""

  @nn.compact
  def __call__(self, x, sample_key):
    del sample_key
    y = WNConv(6, 3)(x)
    return y, WNDense(4)(nn.relu(y))


def test_init_params_is_a_data_dependent_model_init():
  """`init_params` (two programs) gives what `model.init` gives in distribution: the same
  tree, He-normal kernels, and g and b that standardise each layer's output on the batch."""
  model = _TwoLayers()
  x = jax.random.uniform(jax.random.key(0), (64, 8, 8, 3)) * 3 + 1
  params = layers.init_params(model, jax.random.key(1), x, jax.random.key(2))
  plain = model.init(jax.random.key(1), x, jax.random.key(2))["params"]
  flat, flat_plain = traverse_util.flatten_dict(params), traverse_util.flatten_dict(plain)
  assert {p: v.shape for p, v in flat.items()} == {p: v.shape for p, v in flat_plain.items()}
  for name in ("WNConv_0", "WNDense_0"):
    kernel = flat[(name, "kernel")]
    he_std = np.sqrt(2 / np.prod(kernel.shape[:-1]))
    assert abs(np.std(kernel) / he_std - 1) < 0.15, name
    assert np.max(np.abs(kernel)) <= 2 * layers.kernel_scale(kernel.shape) + 1e-6  # truncated
  kernel = flat[("WNConv_0", "kernel")]
  for p in (params, plain):
    for y in model.apply({"params": p}, x, None):
      axes = tuple(range(y.ndim - 1))
      np.testing.assert_allclose(np.mean(y, axes), 0, atol=1e-4)
      np.testing.assert_allclose(np.std(y, axes), 1, atol=1e-3)
  again = layers.init_params(model, jax.random.key(1), x, jax.random.key(2))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, again)  # same seed, same params
  other = layers.init_params(model, jax.random.key(5), x, jax.random.key(2))
  assert not np.allclose(other["WNConv_0"]["kernel"], kernel)
