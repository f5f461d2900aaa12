"""Tests of hvae_jax.metrics against hand-computed values and the paper's protocol."""
import numpy as np
import pytest

from hvae_jax import metrics

S_IN = np.array([0.1, 0.2, 0.3, 0.4])
S_OUT = np.array([0.35, 0.5, 0.6, 0.7])


def test_ood_metrics_hand_computed():
  m = metrics.ood_metrics(S_IN, S_OUT)
  # AUROC = P(score_out > score_in): count the pairs by hand. 0.35 beats 0.1, 0.2, 0.3 (3);
  # 0.5, 0.6 and 0.7 beat all four (12); no ties -> 15 / 16.
  pairs = sum(float(o > i) + 0.5 * float(o == i) for o in S_OUT for i in S_IN)
  assert pairs == 15
  assert m["auroc"] == pytest.approx(15 / 16)
  # AUPRC (average precision). Sorted descending: 0.7 P, 0.6 P, 0.5 P, 0.4 N, 0.35 P, ...
  # Thresholds with (precision, recall): 0.7 (1, 1/4), 0.6 (1, 2/4), 0.5 (1, 3/4),
  # 0.4 (3/4, 3/4), 0.35 (4/5, 1).  AP = sum (R_n - R_{n-1}) P_n
  # = 1/4 * 1 + 1/4 * 1 + 1/4 * 1 + 0 * 3/4 + 1/4 * 4/5 = 0.95.
  assert m["auprc"] == pytest.approx(0.25 * 3 + 0.25 * 0.8)
  assert m["auprc"] == pytest.approx(0.95)
  # FPR80: TPR at thresholds 0.7/0.6/0.5 is 1/4, 2/4, 3/4 < 0.8; 0.4 keeps TPR 3/4 (FPR 1/4);
  # the first threshold with TPR >= 0.8 is 0.35 (TPR 1), where only 0.4 of the in-dist
  # scores is flagged -> FPR = 1/4.
  assert m["fpr80"] == pytest.approx(0.25)
  assert set(m) == {"auroc", "auroc_se", "auprc", "fpr80", "fpr95", "aupr_in", "aupr_out"}
  assert all(isinstance(v, float) for v in m.values())


def test_fpr80_takes_first_threshold_reaching_080():
  # 5 OOD scores: TPR steps of 0.2; TPR = 0.8 exactly after the 4th OOD score (0.6).
  s_out = np.array([0.9, 0.8, 0.7, 0.6, 0.0])
  s_in = np.array([0.65, 0.5, 0.4, 0.3, 0.2])
  # At threshold 0.6 one in-dist score (0.65) is above -> FPR = 1/5, TPR = 4/5.
  assert metrics.ood_metrics(s_in, s_out)["fpr80"] == pytest.approx(0.2)


def test_perfect_separation():
  m = metrics.ood_metrics(np.array([0.0, 1.0, 2.0]), np.array([5.0, 6.0]))
  assert m == {"auroc": 1.0, "auroc_se": 0.0, "auprc": 1.0, "fpr80": 0.0, "fpr95": 0.0,
               "aupr_in": 1.0, "aupr_out": 1.0}


def test_reversed_orientation():
  rng = np.random.default_rng(0)
  s_in, s_out = rng.normal(size=200), rng.normal(0.7, size=150)
  a = metrics.ood_metrics(s_in, s_out)["auroc"]
  b = metrics.ood_metrics(-s_in, -s_out)["auroc"]
  assert 0.6 < a < 0.9
  assert b == pytest.approx(1 - a)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_raises(bad):
  with pytest.raises(ValueError, match="non-finite"):
    metrics.ood_metrics(np.array([0.1, bad]), S_OUT)
  with pytest.raises(ValueError, match="non-finite"):
    metrics.ood_metrics(S_IN, np.array([bad, 0.2]))
  with pytest.raises(ValueError, match="'elbo'.*non-finite"):
    metrics.evaluate_scores({"elbo": np.array([1.0, bad])}, {"elbo": np.array([2.0, 3.0])})
  with pytest.raises(ValueError, match="non-finite"):
    metrics.calibrate_threshold(np.array([1.0, bad]))


def test_empty_raises():
  with pytest.raises(ValueError, match="empty"):
    metrics.ood_metrics(np.array([]), S_OUT)
  with pytest.raises(ValueError, match="empty"):
    metrics.ood_metrics(S_IN, np.array([]))
  with pytest.raises(ValueError):
    metrics.equal_size_indices(0, 5, seed=0)


def test_equal_size_indices_sizes_and_seeding():
  idx_in, idx_out = metrics.equal_size_indices(100, 30, seed=1)
  assert len(idx_in) == len(idx_out) == 30
  np.testing.assert_array_equal(idx_out, np.arange(30))  # smaller set kept whole
  assert len(np.unique(idx_in)) == 30  # without replacement
  assert np.isin(idx_in, np.arange(100)).all()
  assert idx_in.dtype == np.int64 and np.all(np.diff(idx_in) > 0)
  b_in, _ = metrics.equal_size_indices(100, 30, seed=1)
  np.testing.assert_array_equal(idx_in, b_in)  # same seed, same subset
  c_in, _ = metrics.equal_size_indices(100, 30, seed=2)
  assert not np.array_equal(idx_in, c_in)
  # Larger OOD set: the OOD side is subsampled instead.
  d_in, d_out = metrics.equal_size_indices(30, 100, seed=1)
  assert len(d_in) == len(d_out) == 30
  np.testing.assert_array_equal(d_in, np.arange(30))
  # Equal sizes: nothing is dropped.
  e_in, e_out = metrics.equal_size_indices(30, 30, seed=3)
  np.testing.assert_array_equal(e_in, np.arange(30))
  np.testing.assert_array_equal(e_out, np.arange(30))


def test_evaluate_scores_shares_indices_and_orients():
  rng = np.random.default_rng(0)
  base_in, base_out = rng.normal(size=300), rng.normal(1.0, size=80)
  scores_in = {"llr_k1": base_in, "elbo": -base_in, "llr_k2": 3 * base_in + 1}
  scores_out = {"llr_k1": base_out, "elbo": -base_out, "llr_k2": 3 * base_out + 1}
  res = metrics.evaluate_scores(scores_in, scores_out, seed=4, orient={"elbo": -1})
  assert list(res) == ["llr_k1", "elbo", "llr_k2"]
  # Monotone transforms of one score give identical metrics only if evaluated on the very
  # same subsampled examples.
  for n in ["elbo", "llr_k2"]:
    for key in ["auroc", "auprc", "fpr80"]:
      assert res[n][key] == pytest.approx(res["llr_k1"][key])
  # And they equal the metrics on the explicitly subsampled arrays.
  idx_in, idx_out = metrics.equal_size_indices(300, 80, seed=4)
  ref = metrics.ood_metrics(base_in[idx_in], base_out[idx_out])
  assert res["llr_k1"] == pytest.approx(ref)
  # Without the flip, the ELBO looks anti-correlated.
  res2 = metrics.evaluate_scores(scores_in, scores_out, seed=4)
  assert res2["elbo"]["auroc"] == pytest.approx(1 - res["elbo"]["auroc"])


def test_evaluate_scores_rejects_mismatched_inputs():
  with pytest.raises(ValueError, match="missing"):
    metrics.evaluate_scores({"a": S_IN}, {"b": S_OUT})
  with pytest.raises(ValueError, match="same examples"):
    metrics.evaluate_scores({"a": S_IN, "b": S_IN[:3]}, {"a": S_OUT, "b": S_OUT})
  with pytest.raises(ValueError, match="orient"):
    metrics.evaluate_scores({"a": S_IN}, {"a": S_OUT}, orient={"a": 2})


def test_calibrate_threshold_and_is_ood():
  rng = np.random.default_rng(0)
  val, fresh = rng.normal(size=20000), rng.normal(size=20000)
  th = metrics.calibrate_threshold(val, tpr=0.95)
  assert th == pytest.approx(1.645, abs=0.05)  # the normal 95% quantile
  assert np.mean(val <= th) >= 0.95
  assert np.mean(val <= th) == pytest.approx(0.95, abs=1e-3)
  assert np.mean(~metrics.is_ood(fresh, th)) == pytest.approx(0.95, abs=0.01)
  # Tiny case: at least 95% of 4 scores accepted means all of them.
  assert metrics.calibrate_threshold(S_IN, 0.95) == pytest.approx(0.4)
  assert metrics.calibrate_threshold(S_IN, 0.5) == pytest.approx(0.2)
  np.testing.assert_array_equal(metrics.is_ood(np.array([0.1, 0.2, 0.3]), 0.2),
                                [False, False, True])
  with pytest.raises(ValueError):
    metrics.calibrate_threshold(val, tpr=0.0)


def test_select_k_by_auroc():
  results = {"elbo": {"auroc": 0.99}, "llr_k1": {"auroc": 0.8}, "llr_k2": {"auroc": 0.95},
             "llr_k3": {"auroc": 0.95}}
  assert metrics.select_k_by_auroc(results) == ("llr_k2", 0.95)  # elbo ignored; tie -> k=2
  with pytest.raises(ValueError):
    metrics.select_k_by_auroc({"elbo": {"auroc": 0.5}})


def test_openood_metrics_and_the_auroc_standard_error():
  """FPR95 / AUPR-In / AUPR-Out by OpenOOD's conventions, on a case worked by hand, and the
  Hanley-McNeil standard error against the spread of AUROCs over independent draws."""
  s_in = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5,
                   1.6, 1.7, 1.8, 1.9, 5.0])
  s_out = np.array([1.95, 3.0, 4.0, 6.0])
  m = metrics.ood_metrics(s_in, s_out)
  # 95 % of in-dist (19 of 20) accepted at threshold 1.9: of the OOD, none is <= 1.9.
  assert m["fpr95"] == 0.0
  assert m["aupr_out"] == m["auprc"]
  ref_in = metrics.ood_metrics(-s_out, -s_in)["auprc"]  # in-distribution as the positive class
  assert m["aupr_in"] == pytest.approx(ref_in)
  rng = np.random.default_rng(0)
  aurocs = [metrics.ood_metrics(rng.normal(size=300), rng.normal(0.8, size=300))["auroc"]
            for _ in range(200)]
  se = metrics.ood_metrics(rng.normal(size=300), rng.normal(0.8, size=300))["auroc_se"]
  assert se == pytest.approx(np.std(aurocs), rel=0.2)
  assert not hasattr(metrics, "select_k_unsupervised")  # the noisy global pick is retired


def test_markdown_table():
  rows = [{"score": "llr_k1", "AUROC": 0.98765, "n": 3},
          {"score": "a|b", "AUROC": np.float32(0.5)}]
  t = metrics.markdown_table(rows, ["score", "AUROC", "n"])
  lines = t.split("\n")
  assert lines[0] == "| score | AUROC | n |"
  assert lines[1] == "|---|---|---|"
  assert lines[2] == "| llr_k1 | 0.988 | 3 |"
  assert lines[3] == "| a\\|b | 0.500 |  |"
  assert metrics.markdown_table(rows[:1], ["AUROC"], floatfmt=".1f").endswith("| 1.0 |")
