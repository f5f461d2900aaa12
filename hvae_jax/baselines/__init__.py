"""The competing OOD scores of the paper's Table 2: the scores (`scores`) and running them
over whole data sets (`runner`)."""
from hvae_jax.baselines.runner import (BaselineOptions, BaselineScorer, auxiliary_runs,
                                       make_scorer, parse_scores, reference_indices)
from hvae_jax.baselines.scores import (CODECS, ENCODER_PREFIXES, FAMILIES, SCORE_NAMES,
                                       LikelihoodRegret, background_llr,
                                       batch_groups, batch_typicality, check_codec,
                                       compressed_bits_per_dim, input_complexity, is_encoder_param,
                                       larger_is_ood, log_likelihood, make_loglik_fn,
                                       regret_step, split_encoder, typicality, waic)

__all__ = ["BaselineOptions", "BaselineScorer", "auxiliary_runs", "make_scorer", "parse_scores",
           "reference_indices", "CODECS", "ENCODER_PREFIXES", "FAMILIES", "SCORE_NAMES",
           "LikelihoodRegret", "background_llr", "batch_groups", "batch_typicality",
           "check_codec", "compressed_bits_per_dim", "input_complexity", "is_encoder_param",
           "larger_is_ood", "log_likelihood", "make_loglik_fn", "regret_step",
           "split_encoder", "typicality", "waic"]
