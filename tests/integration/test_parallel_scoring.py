"""Data-parallel scoring: every batch split over the devices (2 simulated CPU
devices here, see conftest.py) gives the scores of a one-device run, for the paper's scores
(every k, importance-weighted with chunked samples) and the competing scores."""
import dataclasses

import jax
import numpy as np
import pytest

from hvae_jax import api, baselines, batching, image_keys, sharding
from tests.helpers import fmnist_slice, mnist_slice, tiny_model_and_params


@pytest.fixture(scope="module")
def models(tiny_workdir):
  assert jax.device_count() == 2, "conftest.py sets up 2 CPU devices"
  every = api.load_model(tiny_workdir)
  one = dataclasses.replace(every, mesh=sharding.make_data_mesh(jax.devices()[:1]), _fns={})
  return every, one


def test_paper_scores_over_two_devices_equal_one_device(models):
  every, one = models
  x = np.concatenate([fmnist_slice(9), mnist_slice(9)])  # 18: the last batch is padded
  kw = dict(iw_samples=3, iw_samples_lk=5, batch_size=8, seed=3)
  a, b = every.score(x, **kw), one.score(x, **kw)
  assert set(a) == set(b) and a["llr_k2"].shape == (18,)
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-3, err_msg=name)
  # The scoring batch really was split: the jitted scorer got a 2-device sharded batch.
  seen = []
  fn = every.score_fn((1, 2), 3, 5, every.config.eval.chunk_size)
  batching.map_batches(lambda p, b: seen.append(b[0].sharding) or fn(p, *b), every.params,
                       (every.model_inputs(x), image_keys.key_data(x, 0)), 8, None)
  assert all(len(s.device_set) == 2 for s in seen)


def test_batch_size_is_rounded_up_to_the_device_count(models):
  every, _ = models
  mesh = sharding.make_data_mesh()
  assert batching.device_batch_size(7, 100, mesh) == 8
  assert batching.device_batch_size(500, 3, mesh) == 4
  s = every.score(fmnist_slice(3), batch_size=3)  # odd sizes still work
  assert s["elbo"].shape == (3,) and np.all(np.isfinite(s["elbo"]))


def test_competing_scores_over_two_devices_equal_one_device(models):
  every, one = models
  other = tiny_model_and_params(seed=1)[1]
  images = np.concatenate([fmnist_slice(4), mnist_slice(4)])
  # waic and iw_nll run the same batched log p pass as bg_llr; regret refits per device.
  opts = baselines.BaselineOptions(families=("bg_llr", "regret"), iw_samples=2, batch_size=8,
                                   regret_steps=1, regret_batch_size=8)
  out = []
  for m in (every, one):
    aux = dataclasses.replace(m, params=other, path="other", _fns={})
    out.append(baselines.BaselineScorer(m, opts, background=aux).compute(images).scores)
  for name in ("iw_bpd", "bg_llr", "regret"):
    np.testing.assert_allclose(out[0][name], out[1][name], rtol=1e-4, atol=2e-2, err_msg=name)
