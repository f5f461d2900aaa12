"""hvae_jax.port: the authors' models (hvae-oodd) ported and compared with their outputs.

Always (no torch needed): tiny reference models stored in tests/fixtures/port (state dicts,
constructor kwargs and the reference's own float32 and float64 outputs, written by
scripts/make_port_fixtures.py) -- the FashionMNIST VAE, the logistic-mixture VAE and BIVA --
are ported and must compute what the reference computed, every latent at its mean, for every
k; a tiny HVAE's hand-named state dict maps onto our parameters with every key used.
With torch: each layer kind computes what the reference's torch layer computes, the converter
reads dvae_run.py's files, and (with the hvae-oodd checkout at $HVAE_OODD_DIR, default
.ref/hvae-oodd) the fixtures regenerate equal to the stored ones. The full-size models against
the real reference are bench/reference_equivalence.py.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bench.reference_equivalence import ours_scores, rounding_only
from hvae_jax import api, config as config_lib, port, port_mapping
from hvae_jax.layers import WNConv, WNDense
from tests.helpers import REPO, tiny_config, tiny_model_and_params

try:
  import torch
  F = torch.nn.functional
except ImportError:  # an optional extra: the tests that need it are skipped
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is an optional extra (pip install "
                                 "torch), needed only to port PyTorch checkpoints")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "port")
FIXTURE_NAMES = ("fmnist_vae", "cifar_vae_dmol", "cifar_biva_dmol")
HVAE_OODD_DIR = os.environ.get("HVAE_OODD_DIR", os.path.join(REPO, ".ref", "hvae-oodd"))


def _fixture(name, folder=FIXTURES):
  with open(os.path.join(folder, f"{name}.json"), encoding="utf-8") as f:
    meta = json.load(f)
  return meta, dict(np.load(os.path.join(folder, f"{name}.npz")))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_ported_reference_computes_what_the_reference_computed(name):
  """Every cell (log p(x|z), each latent's KL, the bound; every k; max over 8 images) is as
  close to the reference's float64 result as the reference's own float32 result, or within
  1e-3 nats or 1e-5 of the value: float32 rounding. A wrong weight layout or connection moves
  these terms by whole nats."""
  meta, arrays = _fixture(name)
  state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
  config = config_lib.load_config("tiny", meta["config"])
  config, model, params = port.port_reference(state, meta["kwargs"], meta["class_name"], config)
  ours = ours_scores(model, params, arrays["x"], range(len(model.blocks)),
                     compiler_options={"xla_backend_optimization_level": 0})  # fast compile
  assert rounding_only(ours, arrays, 1e-3, 1e-5)
  assert config.model.colour_input == "unit"
  if name == "cifar_biva_dmol":
    assert (config.model.latent_activation, config.model.likelihood_activation) == ("elu",
                                                                                   "identity")
    assert len(ours["kl_k0"][0]) == 5  # bu_1, td_1, bu_2, td_2, z_3
    np.testing.assert_array_equal(ours["kl_k2"][:, :4], 0.0)  # L^{>2}: layers 1-2 skipped


@needs_torch
@pytest.mark.skipif(not os.path.isdir(os.path.join(HVAE_OODD_DIR, "oodd")),
                    reason=f"no hvae-oodd checkout at {HVAE_OODD_DIR} (set HVAE_OODD_DIR)")
def test_fixtures_regenerate_equal(tmp_path):
  """scripts/make_port_fixtures.py rebuilds the stored fixtures from the reference's code."""
  env = dict(os.environ, HVAE_OODD_DIR=HVAE_OODD_DIR)
  r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_port_fixtures.py"),
                      f"--out={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  for name in FIXTURE_NAMES:
    (meta, arrays), (new_meta, new_arrays) = _fixture(name), _fixture(name, tmp_path)
    assert new_meta == meta
    assert sorted(new_arrays) == sorted(arrays)
    for key, value in arrays.items():  # one thread, seeded: equal but for the CPU's rounding
      np.testing.assert_allclose(new_arrays[key], value, rtol=1e-4, atol=1e-4, err_msg=key)


def _weights(rng, v_shape, g_shape):
  """Random torch-layout (weight_v, weight_g, bias); the bias has one entry per output."""
  return (rng.normal(size=v_shape).astype(np.float32),
          rng.uniform(0.5, 2.0, g_shape).astype(np.float32),
          rng.normal(size=max(g_shape)).astype(np.float32))


def _same_pad(size, k, s):
  total = max((-(-size // s) - 1) * s + k - size, 0)
  return total // 2, total - total // 2  # the reference pads the odd one right/bottom


@needs_torch
@pytest.mark.parametrize("k, s", [(5, 2), (3, 1), (5, 1)])
def test_conv_layout(k, s):
  rng = np.random.default_rng(k * 10 + s)
  v, g, b = _weights(rng, (6, 4, k, k), (6, 1, 1, 1))
  x = rng.normal(size=(2, 4, 14, 14)).astype(np.float32)
  w = torch._weight_norm(torch.from_numpy(v), torch.from_numpy(g), 0)  # pylint: disable=protected-access
  lo, hi = _same_pad(14, k, s)
  want = F.conv2d(F.pad(torch.from_numpy(x), (lo, hi, lo, hi)), w, torch.from_numpy(b), s)
  layer = dict(kind="conv", transposed=False, in_map=None, out_map=None)
  got = WNConv(6, k, s).apply({"params": port_mapping.convert_layer(layer, v, g, b)},
                              x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=2e-5)


@needs_torch
@pytest.mark.parametrize("k", [5, 3])
@pytest.mark.parametrize("upsample", ["subpixel", "transpose"])
def test_transposed_conv_layout(k, upsample):
  """ConvTranspose2d [in, out, kh, kw] with the reference's crop of k - s pixels."""
  rng = np.random.default_rng(k)
  v, g, b = _weights(rng, (4, 6, k, k), (1, 6, 1, 1))
  x = rng.normal(size=(2, 4, 7, 7)).astype(np.float32)
  w = torch._weight_norm(torch.from_numpy(v), torch.from_numpy(g), 1)  # pylint: disable=protected-access
  y = F.conv_transpose2d(torch.from_numpy(x), w, torch.from_numpy(b), 2)
  lo, hi = (k - 2) // 2, (k - 2) - (k - 2) // 2
  want = y[:, :, lo:y.shape[2] - hi, lo:y.shape[3] - hi]
  layer = dict(kind="conv", transposed=True, in_map=None, out_map=None)
  got = WNConv(6, k, 2, True, upsample).apply({"params": port_mapping.convert_layer(layer, v, g, b)},
                                              x.transpose(0, 2, 3, 1))
  assert got.shape == (2, 14, 14, 6)
  np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=2e-5)


@needs_torch
def test_dense_layouts_reorder_feature_maps():
  """A dense layer reading a (c, h, w)-flattened map, and one writing one (AsFeatureMap)."""
  rng = np.random.default_rng(0)
  v, g, b = _weights(rng, (5, 3 * 4 * 2), (5, 1))
  x = rng.normal(size=(2, 2, 3, 4)).astype(np.float32)  # NCHW, c=2, h=3, w=4
  w = torch._weight_norm(torch.from_numpy(v), torch.from_numpy(g), 0)  # pylint: disable=protected-access
  want = F.linear(torch.from_numpy(x).flatten(1), w, torch.from_numpy(b)).numpy()
  layer = dict(kind="dense", transposed=False, in_map=(3, 4, 2), out_map=None)
  got = WNDense(5).apply({"params": port_mapping.convert_layer(layer, v, g, b)}, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)

  v, g, b = _weights(rng, (24, 5), (24, 1))
  z = rng.normal(size=(2, 5)).astype(np.float32)
  w = torch._weight_norm(torch.from_numpy(v), torch.from_numpy(g), 0)  # pylint: disable=protected-access
  want = F.linear(torch.from_numpy(z), w, torch.from_numpy(b)).view(2, 2, 3, 4).numpy()
  layer = dict(kind="dense", transposed=False, in_map=None, out_map=(3, 4, 2))
  got = WNDense(24).apply({"params": port_mapping.convert_layer(layer, v, g, b)}, z).reshape(2, 3, 4, 2)
  np.testing.assert_allclose(np.asarray(got), want.transpose(0, 2, 3, 1), atol=2e-5)


# The tiny config's HVAE (3 stages of one block, latents conv 2, dense 4, dense 2) as hvae-oodd
# names its weight-normed layers (written out by hand from its module tree).
_TINY_LAYERS = [
    "stages.0.q_deterministic.layers.0.conv1.conv", "stages.0.q_deterministic.layers.0.conv2.conv",
    "stages.0.stochastic.in_transform_q.conv", "stages.0.stochastic.in_transform_p.conv",
    "stages.0.p_deterministic.layers.0.conv1.conv", "stages.0.p_deterministic.layers.0.conv2.conv",
    "stages.1.q_deterministic.layers.0.conv1.conv", "stages.1.q_deterministic.layers.0.conv2.conv",
    "stages.1.stochastic.in_transform_q.linear", "stages.1.stochastic.in_transform_p.linear",
    "stages.1.q_projection.transform.linear", "stages.1.p_projection.transform.linear",
    "stages.1.p_deterministic.layers.0.conv1.conv", "stages.1.p_deterministic.layers.0.conv2.conv",
    "stages.2.q_deterministic.layers.0.conv1.conv", "stages.2.q_deterministic.layers.0.conv2.conv",
    "stages.2.stochastic.in_transform_q.linear", "stages.2.p_projection.transform.linear",
    "stages.2.p_deterministic.layers.0.conv1.conv", "stages.2.p_deterministic.layers.0.conv2.conv",
    "likelihood.parameter_net.conv",
]
_TINY_KWARGS = {"kwargs": dict(
    input_shape=[1, 28, 28], likelihood_module="BernoulliLikelihoodConv2d",
    config_deterministic=[[dict(block="ResBlockConv2d", out_channels=8, kernel_size=3, stride=s,
                                weightnorm=True, gated=False)] for s in (2, 2, 1)],
    config_stochastic=[dict(block="GaussianConv2d", latent_features=2, weightnorm=True),
                       dict(block="GaussianDense", latent_features=4, weightnorm=True),
                       dict(block="GaussianDense", latent_features=2, weightnorm=True)],
    q_dropout=0.0, p_dropout=0.0, activation="ReLU", skip_stochastic=True, padded_shape=None)}


def _tiny_state(model):
  """A state dict with hvae-oodd's keys for the tiny model, random weights, shapes from the
  layers (each layout is checked against torch above)."""
  rng = np.random.default_rng(0)
  layers = port_mapping.model_layers(model, (28, 28, 1))
  prefixes = {port_mapping.reference_prefix(p, l["kind"]): l for p, l in layers.items()}
  assert sorted(prefixes) == sorted(_TINY_LAYERS)
  state = {}
  for prefix, layer in prefixes.items():
    for suffix, shape in zip(("weight_v", "weight_g", "bias"), port_mapping.reference_shapes(layer)):
      state[f"{prefix}.{suffix}"] = rng.normal(size=shape).astype(np.float32)
    state[prefix.rsplit(".", 1)[0] + ".initialized"] = np.asarray(True)
  for i in range(3):
    state[f"stages.{i}.stochastic.std_activation_inverse.beta"] = np.asarray([np.log(2)])
    state[f"stages.{i}.stochastic.std_activation_inverse.threshold"] = np.asarray([20.0])
  # The top stage's unused q-projection and its fixed N(0, I) prior (logits mean, 0).
  state["stages.2.q_projection.transform.linear.weight_v"] = np.ones((392, 2), np.float32)
  state["stages.2.stochastic.prior_logits"] = np.zeros(4, np.float32)
  return state


def test_tiny_model_mapping_uses_every_key():
  model, params = tiny_model_and_params()
  state = _tiny_state(model)
  ported = port_mapping.port_params(model, (28, 28, 1), state)
  assert (jax.tree_util.tree_structure(ported) == jax.tree_util.tree_structure(params))
  assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(ported),
                                                jax.tree_util.tree_leaves(params)))
  v = state["stages.0.q_deterministic.layers.0.conv1.conv.weight_v"]
  np.testing.assert_array_equal(ported["q_blocks_0_0"]["conv1"]["kernel"], v.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(ported["lik"]["head"]["bias"],
                                state["likelihood.parameter_net.conv.bias"])


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("stages.1.p_projection.transform.linear.weight_g"),
     "stages.1.p_projection.transform.linear.weight_g .*missing"),
    (lambda s: s.update({"stages.3.q_deterministic.layers.0.conv1.conv.bias": np.zeros(8)}),
     "stages.3.q_deterministic.layers.0.conv1.conv.bias maps to nothing"),
    (lambda s: s.update({"stages.0.stochastic.in_transform_q.conv.bias": np.zeros(5)}),
     r"stages.0.stochastic.in_transform_q.conv.bias has shape \(5,\).*needs \(4,\)"),
    (lambda s: s.update({"stages.0.q_deterministic.layers.0.conv2.initialized": np.asarray(False)}),
     "never initialised"),
    (lambda s: s.update({"stages.2.stochastic.prior_logits": np.ones(4, np.float32)}),
     "not N\\(0, I\\)"),
], ids=["missing", "left_over", "wrong_shape", "uninitialised", "learned_prior"])
def test_mapping_errors_name_the_key(change, message):
  model, _ = tiny_model_and_params()
  state = _tiny_state(model)
  change(state)
  with pytest.raises(port.PortError, match=message):
    port_mapping.port_params(model, (28, 28, 1), state)


@needs_torch
def test_converter_writes_a_loadable_checkpoint(tmp_path):
  model, _ = tiny_model_and_params()
  state = _tiny_state(model)
  ref = tmp_path / "FashionMNISTBinarized-2026-12-03"
  ref.mkdir()
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
             ref / port.STATE_DICT_FILE)
  torch.save(_TINY_KWARGS, ref / port.KWARGS_FILE)
  torch.save("VAE", ref / port.CLASS_NAME_FILE)
  out = port.convert(str(ref), tiny_config(), str(tmp_path / "ported"))
  m = api.load_model(out)
  assert m.config.model.latent_activation == m.config.model.likelihood_activation == "relu"
  expected = port_mapping.port_params(m.model, (28, 28, 1), state)
  for a, b in zip(jax.tree_util.tree_leaves(m.params), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(port.PortError, match="already holds a checkpoint"):
    port.convert(str(ref), tiny_config(), out)
  with pytest.raises(port.PortError, match=r"blocks \[\[\(8, 3, 2\)\].*config.model.blocks"):
    port.convert(str(ref), tiny_config(model__blocks=(((8, 3, 2),), ((8, 3, 2),), ((8, 3, 2),))),
                 str(tmp_path / "other"))
  torch.save("BIVA", ref / port.CLASS_NAME_FILE)
  with pytest.raises(port.PortError, match="the reference is hvae-oodd's 'BIVA'.*'hvae'"):
    port.convert(str(ref), tiny_config(), str(tmp_path / "biva"))
  with pytest.raises(port.PortError, match="no hvae-oodd model"):
    port.load_reference(str(tmp_path / "nothing"))
