"""bench/estimator_curve.py: the S-curve estimators from per-sample bounds (numpy only)."""
import numpy as np
from scipy.special import logsumexp

from bench import estimator_curve as ec


def _dump(n=6, s_max=20, extra=4, seed=0):
  rng = np.random.default_rng(seed)
  main = rng.normal(-300, 5, (n, s_max, 2))
  return {"main": main, "lk": rng.normal(-310, 9, (n, extra)),
          "lk_mean": rng.normal(-310, 7, (n, extra))}


def test_groups_are_disjoint_iw_bounds():
  v = np.random.default_rng(1).normal(size=(3, 10))
  g = ec.groups(v, 4)  # two whole groups, the last two samples unused
  assert g.shape == (3, 2)
  np.testing.assert_allclose(g[:, 1], logsumexp(v[:, 4:8], axis=1) - np.log(4))
  np.testing.assert_allclose(ec.groups(v, 1), v)


def test_first_replication_is_the_evaluate_py_estimator():
  d = _dump()
  s = 5
  r = ec.estimator_reps(d, s, reps=8)
  elbo = logsumexp(d["main"][:, :s, 0], axis=1) - np.log(s)
  np.testing.assert_allclose(r["paper"][:, 0], elbo - d["lk"][:, 0])
  np.testing.assert_allclose(r["paper_mean"][:, 0], elbo - d["lk_mean"][:, 0])
  np.testing.assert_allclose(r["paper_shared"][:, 0], elbo - d["main"][:, 0, 1])
  np.testing.assert_allclose(
      r["both"][:, 0], elbo - (logsumexp(d["main"][:, :s, 1], axis=1) - np.log(s)))
  np.testing.assert_allclose(
      r["both_indep"][:, 0], elbo - (logsumexp(d["main"][:, 10:15, 1], axis=1) - np.log(s)))
  assert r["paper"].shape == (6, 4)  # as many replications as independent L^{>1} samples
  assert "both_indep" not in ec.estimator_reps(d, 20, 8)  # needs 2 S samples


def test_variances_of_the_paper_score_add_up():
  d = _dump()
  v = ec.variances(d, 2)
  assert np.isclose(v["paper"], v["elbo_S"] + v["lk_1"])
  assert v["elbo_S"] < v["lk_1"]  # 5^2 / ~2 against 5^2 per sample
  assert ec.variances(d, 20) == {}  # one group: no variance


def test_curve_rows_and_table():
  data = {"in": _dump(seed=0), "out": _dump(seed=1)}
  data["out"]["lk"] -= 100.0  # OOD: L^{>1} far below the ELBO, the paper's signal
  rows = ec.curve(data, s_grid=(1, 2, 5, 50))
  assert [r["S"] for r in rows] == [1, 2, 5]  # S beyond s_max is left out
  assert rows[0]["paper"]["auroc"] == 1.0
  assert "| 5 |" in ec.table(rows)
