"""The shipped FashionMNIST models load, match their checksums, separate MNIST with LLR^{>1}
and carry a verdict calibrated for them."""
import hashlib
import os

import jax
import numpy as np
import pytest

from hvae_jax import api, metrics
from tests.helpers import REPO, fmnist_slice, mnist_slice

# name -> (parameter count, lowest LLR^{>1} AUROC accepted on 200 vs 200 images). The floors
# sit ~0.1 below each model's 10k-vs-10k AUROC (docs/RESULTS.md): 200 images per side have a
# standard error of about 0.01-0.02 there.
MODELS = {
    "fmnist_hvae_small": (425_826, 0.85),  # 10k vs 10k: 0.953
    "fmnist_hvae": (2_588_898, 0.86),  # the paper's model, 10 epochs of the CPU schedule: 0.967
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checksums_match(name):
  with open(os.path.join(REPO, "pretrained", name, "SHA256SUMS"), encoding="utf-8") as f:
    lines = [l.split() for l in f if l.strip()]
  assert lines
  for digest, rel in lines:
    with open(os.path.join(REPO, "pretrained", name, rel), "rb") as fh:
      assert hashlib.sha256(fh.read()).hexdigest() == digest, rel


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_scores_and_separates_fmnist_from_mnist(name):
  n_params, floor = MODELS[name]
  m = api.load_model(os.path.join(REPO, "pretrained", name))
  assert sum(np.size(v) for v in jax.tree_util.tree_leaves(m.params)) == n_params
  # The shipped verdict: recalibrated for this very model with the default per-input detector.
  assert m.threshold is not None and m.threshold.model_digest == m.digest
  assert m.threshold.rule == m.config.eval.detector
  assert abs(m.threshold.summary["acceptance"] - 0.95) <= 0.015
  s_in = m.score(fmnist_slice(200, seed=1), ks=(1,))
  s_out = m.score(mnist_slice(200, seed=1), ks=(1,))
  res = metrics.ood_metrics(s_in["llr_k1"], s_out["llr_k1"])
  assert res["auroc"] > floor, res
  # The likelihood itself fails, as the paper says: MNIST gets the higher ELBO.
  assert np.mean(s_out["elbo"]) > np.mean(s_in["elbo"])
  verdict = m.is_ood(mnist_slice(50, seed=2))
  assert verdict.mean() > 0.5
