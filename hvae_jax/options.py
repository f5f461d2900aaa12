"""Short names for the evaluation's config keys: evaluate.py's flags and `hvae_jax.evaluate`'s
keywords. Light on purpose (no JAX): evaluate.py defines its flags from it before JAX starts."""
from __future__ import annotations

from typing import Any, Callable, Optional

from hvae_jax import checks

# Short option name -> (config key, check, help). Help None: a second spelling of an option
# (the Python API's), not a flag of its own.
OPTIONS: dict[str, tuple[str, Optional[Callable[[str, Any], Any]], Optional[str]]] = {
    "k": ("eval.ks", None, "Values of k to score (default: every k in 1..L-1)."),
    "ks": ("eval.ks", None, None),
    "iw_samples": ("eval.iw_samples_elbo", checks.positive_int,
                   "Importance samples S of the ELBO: the paper's LLR^{>k}_S = L_S - L^{>k} "
                   "(eqs. 9-10; L^{>k} keeps one sample)."),
    "iw_samples_elbo": ("eval.iw_samples_elbo", checks.positive_int,
                        "Same as --iw_samples (its long name)."),
    "iw_samples_lk": ("eval.iw_samples_lk", checks.positive_int,
                      "Importance samples of L^{>k} (default 1, the paper's estimator); > 1 "
                      "weights both bounds, another estimator."),
    "batch_size": ("eval.batch_size", checks.positive_int, "Evaluation batch size."),
    "max_examples": ("eval.max_examples", checks.example_count,
                     "Score at most this many images per data set (a seeded subset; -1 = all)."),
    "seed": ("eval.seed", checks.non_negative_int,
             "Seed of the samples, the subsets and the detectors' fit/calibration halves."),
    "detector": ("eval.detector", None,
                 "The verdict's per-input rule written to threshold.json: dose_<mcd|gmm|kde>"
                 "[_elbo][_std] (a density over the per-layer terms), any_stat, joint, "
                 "joint_k<k>, any_k (the paper's rule), any_k_typ, or llr_k<k> for one k."),
    "reference_examples": ("eval.reference_examples", checks.positive_int,
                           "In-distribution training images the detectors are fitted on (one "
                           "seeded half) and calibrated on (the other), whatever max_examples."),
    "scores": ("eval.scores", None,
               "'paper' (ELBO, L^{>k}, LLR^{>k} only), 'all', or a comma list of baselines: "
               "iw_nll, typicality, complexity, bg_llr, waic, regret."),
    "use_cache": ("eval.use_cache", None, None),
    "background": ("baselines.background", None, None),
    "background_checkpoint": ("baselines.background", None,
                              "bg_llr: a model trained on perturbed inputs (train.py "
                              "--config.data.perturb_rate=0.2); default: <run>_bg if it exists."),
    "ensemble": ("baselines.ensemble", None, None),
    "ensemble_checkpoints": ("baselines.ensemble", None,
                             "waic: other independently seeded models of the same architecture "
                             "and data; default: the <run>_seed<N> folders that exist."),
    "baseline_iw_samples": ("baselines.iw_samples", checks.positive_int,
                            "Importance samples S of log p(x) in the likelihood-based baselines."),
    "typicality_batch": ("baselines.typicality_batch", None,
                         "Batch size M of the batch-level typicality test."),
    "regret_steps": ("baselines.regret_steps", None,
                     "Likelihood regret: Adam steps refitting the encoder."),
    "regret_lr": ("baselines.regret_lr", None, "Likelihood regret: Adam learning rate."),
    "regret_weight_decay": ("baselines.regret_weight_decay", None,
                            "Likelihood regret: L2 weight decay added to the encoder's gradient."),
    "regret_batch_size": ("baselines.regret_batch_size", None,
                          "Likelihood regret: examples refit at once."),
}
