"""The per-input detectors (hvae_jax.detectors) on synthetic statistics with known answers."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from hvae_jax import config as config_lib
from hvae_jax import detectors, metrics, tails


def _stats(rng, n, llr1_shift=0.0, elbo_shift=0.0, elbo_scale=1.0, kl2_shift=0.0):
  """A synthetic model output of a 3-layer model: per-layer terms of the ELBO pass and the
  L^{>1}, L^{>2} passes, and the bounds and LLRs they sum to. LLR^{>1} separates OOD shifted
  by `llr1_shift`, LLR^{>2} is noise for both; `kl2_shift` moves layer 2's KL and log p(x|z)
  together, so that no bound and no LLR moves: only the per-layer terms see it."""
  recon = -150 + 25 * elbo_scale * rng.standard_normal(n) + elbo_shift + kl2_shift
  kl = [20 + 3 * rng.standard_normal(n), 10 + 2 * rng.standard_normal(n) + kl2_shift,
        3 + 0.5 * rng.standard_normal(n)]
  recon_k1 = recon - kl[0] - 15 - 10 * rng.standard_normal(n) - llr1_shift
  recon_k2 = recon - kl[0] - kl[1] - 80 - 60 * rng.standard_normal(n)
  s = {"recon": recon, "kl_l1": kl[0], "kl_l2": kl[1], "kl_l3": kl[2],
       "recon_k1": recon_k1, "kl_k1_l2": kl[1], "kl_k1_l3": kl[2],
       "recon_k2": recon_k2, "kl_k2_l3": kl[2]}
  s["elbo"] = recon - sum(kl)
  s["lk_k1"], s["lk_k2"] = recon_k1 - kl[1] - kl[2], recon_k2 - kl[2]
  s["llr_k1"], s["llr_k2"] = s["elbo"] - s["lk_k1"], s["elbo"] - s["lk_k2"]
  return s


@pytest.fixture(scope="module")
def fitted():
  rng = np.random.default_rng(0)
  ref, cal = _stats(rng, 2000), _stats(rng, 2000)
  return {rule: detectors.fit(rule, (1, 2), ref, cal)
          for rule in detectors.combined((1, 2)) + ["llr_k1", "llr_k2"]}


def test_log_tail_is_the_smoothed_empirical_tail():
  rng = np.random.default_rng(1)
  r = rng.standard_normal(4000)
  s = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 8.0])
  got = np.exp(tails.log_tail(r, s))
  np.testing.assert_allclose(got[:6], stats.norm.sf(s[:6]), atol=0.02)
  assert 0 < got[-1] < 1e-10  # beyond every reference value: small, positive, finite
  assert np.all(np.diff(tails.log_tail(r, np.linspace(0, 20, 300))) < 0)  # no ties in the tail
  lower = np.exp(tails.log_tail(r, s, upper=False))
  np.testing.assert_allclose(lower[:6], stats.norm.cdf(s[:6]), atol=0.02)


def test_the_elbo_test_is_two_sided_and_llr_one_sided():
  r = np.random.default_rng(2).standard_normal(4000)
  s = np.array([-4.0, 0.0, 4.0])
  elbo, llr = tails.surprise("elbo", r, s), tails.surprise("llr_k1", r, s)
  assert elbo[0] > 5 and elbo[2] > 5 and elbo[1] < 0.1  # too unlikely and too likely
  assert llr[2] > 5 and llr[0] < 0.01  # only a large LLR^{>k} is surprising


def test_one_statistic_separates_and_every_default_rule_finds_it(fitted):
  rng = np.random.default_rng(3)
  test, ood = _stats(rng, 2000), _stats(rng, 2000, llr1_shift=60.0)
  single = metrics.ood_metrics(fitted["llr_k2"].score(test)[0], fitted["llr_k2"].score(ood)[0])
  assert abs(single["auroc"] - 0.5) < 0.05  # k = 2 alone sees nothing
  for rule in ("any_k", "joint", "joint_k1", "dose_mcd", "dose_gmm", "any_stat"):
    d = fitted[rule]
    (s_in, _), (s_out, driver) = d.score(test), d.score(ood)
    assert metrics.ood_metrics(s_in, s_out)["auroc"] > 0.98, rule
    assert np.mean(s_out > d.threshold) > 0.9, rule
    # The verdict names the statistic that drove it: LLR^{>1}, or the terms it is made of
    # (recon_k1 moved; recon is what it moved away from).
    made_of = ["llr_k1", "recon_k1", "recon"]
    assert np.mean(np.isin(driver[s_out > d.threshold], made_of)) > 0.9, rule


def test_one_layers_term_separates_where_no_sum_does(fitted):
  """OOD that moves only layer 2's KL (and log p(x|z) with it): the ELBO and every LLR^{>k}
  are blind; the density over the per-layer terms (the default) and any_stat catch it and
  name kl_l2."""
  rng = np.random.default_rng(9)
  test, ood = _stats(rng, 2000), _stats(rng, 2000, kl2_shift=15.0)
  for blind in ("elbo", "llr_k1", "llr_k2"):
    assert abs(metrics.ood_metrics(test[blind], ood[blind])["auroc"] - 0.5) < 0.05, blind
  for rule in ("any_k", "any_k_typ", "joint"):
    assert np.mean(fitted[rule].flags(ood)[0]) < 0.15, rule
  for rule in (config_lib.base_config().eval.detector, "dose_mcd", "dose_gmm", "dose_kde",
               "any_stat"):
    flags, driver = fitted[rule].flags(ood)
    assert np.mean(flags) > 0.9, rule
    assert np.mean(driver[flags] == "kl_l2") > 0.9, rule


def test_dose_drops_statistics_without_information(fitted):
  """kl_k1_l2 and the L^{>k} passes' top KL copy the ELBO pass's; they are left out."""
  d = fitted["dose_gmm"]
  assert set(d.features_of) == {"recon", "kl_l1", "kl_l2", "kl_l3", "recon_k1", "recon_k2"}
  assert set(fitted["dose_gmm_elbo"].features_of) == {"recon", "kl_l1", "kl_l2", "kl_l3"}
  assert d.density.summary.endswith("(BIC)")


def test_calibration_holds_on_held_out_in_distribution_images(fitted):
  fresh = _stats(np.random.default_rng(4), 20000)
  for rule, d in fitted.items():
    accepted = np.mean(~d.flags(fresh)[0])
    assert accepted == pytest.approx(0.95, abs=0.015), rule


def test_a_weak_k_cannot_turn_the_verdict_into_a_10_percent_detector(fitted):
  """The retired global pick chose k from noise and could land on a k that flags 10 % of the
  OOD set. The per-input rules look at every k for every input."""
  ood = _stats(np.random.default_rng(5), 2000, llr1_shift=60.0)
  assert np.mean(fitted["llr_k2"].flags(ood)[0]) < 0.15
  for rule in detectors.RULES:
    assert np.mean(fitted[rule].flags(ood)[0]) > 0.9, rule


def test_a_low_level_shift_is_caught_by_the_elbo_test_not_by_llr():
  """OOD that only moves the ELBO (low-level statistics), LLR^{>k} unchanged: any_k is blind,
  any_k_typ and joint (two-sided in the ELBO) catch it, in either direction."""
  rng = np.random.default_rng(6)
  ref, cal = _stats(rng, 2000), _stats(rng, 2000)
  rules = {r: detectors.fit(r, (1, 2), ref, cal) for r in detectors.RULES}
  for shift in (-250.0, 250.0):
    ood = _stats(rng, 2000, elbo_shift=shift)
    assert np.mean(rules["any_k"].flags(ood)[0]) < 0.1
    for rule in ("any_k_typ", "joint"):
      flags, driver = rules[rule].flags(ood)
      assert np.mean(flags) > 0.9 and np.mean(driver[flags] == "elbo") > 0.9, (rule, shift)


def test_json_round_trip_gives_the_same_verdicts(fitted):
  x = _stats(np.random.default_rng(7), 300, llr1_shift=30.0)
  for rule, d in fitted.items():
    back = detectors.Detector.from_json(json.loads(json.dumps(d.to_json())))
    np.testing.assert_array_equal(back.score(x)[0], d.score(x)[0])
    assert back.threshold == d.threshold and math.isfinite(back.threshold)


def test_bad_rules_and_missing_statistics_get_one_clear_error():
  with pytest.raises(ValueError, match="unknown detector 'best_k'"):
    detectors.check_rule("best_k")
  with pytest.raises(ValueError, match="needs k=3"):
    detectors.statistics("llr_k3", (1, 2))
  assert detectors.statistics("joint_k2", (1, 2)) == ("elbo", "llr_k2")
  assert detectors.statistics("any_k", (1, 2)) == ("llr_k1", "llr_k2")
  rng = np.random.default_rng(8)
  d = detectors.fit("any_k", (1, 2), _stats(rng, 50), _stats(rng, 50))
  with pytest.raises(ValueError, match=r"needs the scores \['llr_k2'\]"):
    d.score({"llr_k1": np.zeros(3)})
  with pytest.raises(ValueError, match="1 of 3 images have non-finite"):
    d.score({"llr_k1": np.array([0.0, np.inf, 1.0]), "llr_k2": np.zeros(3)})
  bad = _stats(rng, 50)
  bad["llr_k1"][3] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    detectors.fit("any_k", (1, 2), bad, _stats(rng, 50))
  with pytest.raises(ValueError, match="at least 4"):
    detectors.halves(3, 0)
