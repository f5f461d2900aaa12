"""OOD evaluation: settings (`settings`), the paper's scores of a set (`scoring`), the verdict's
calibration (`calibration`), the whole run (`run`) and its markdown report (`report`)."""
from hvae_jax.data import ALIASES
from hvae_jax.evaluation.calibration import fit_detectors, threshold_for, verdict_summary
from hvae_jax.evaluation.report import markdown_report
from hvae_jax.evaluation.run import default_output_dir, evaluate, orientation, run
from hvae_jax.evaluation.scoring import limit, score_set
from hvae_jax.evaluation.settings import EvalOptions, EvalSettings, eval_config

__all__ = ["fit_detectors", "threshold_for", "verdict_summary", "markdown_report", "ALIASES",
           "default_output_dir", "evaluate", "orientation", "run", "limit", "score_set",
           "EvalOptions", "EvalSettings", "eval_config"]
