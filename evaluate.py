"""Score in-distribution and OOD test sets with ELBO, L^{>k} and LLR^{>k} (Havtorn et al. 2021).

  python evaluate.py --workdir=workdirs/fmnist --ood=mnist --iw_samples=250 --output=out/fmnist

Add the paper's competing scores (hvae_jax/baselines.py) with --scores, e.g.
  --scores=all --background_checkpoint=workdirs/fmnist_bg --ensemble_checkpoints=a,b,c,d
Without those two flags, bg_llr and waic use the models scripts/reproduce_baselines.sh trains
beside the run (<run>_bg, <run>_seed<N>); 'all' skips them, with a note, if there are none.

Writes results.json, results.md (tables shaped like the paper's), ROC and histogram PNGs, the
calibrated threshold and per-example score caches into --output.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from hvae_jax import cli, multihost
from hvae_jax.config import DEFAULT_WORKDIR

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "Training workdir (uses its latest checkpoint); "
                    "the default is train.py's.")
flags.DEFINE_string("checkpoint", None, "A checkpoint: a workdir, its checkpoints/ folder, a step "
                    "directory, or a shipped model under pretrained/. Overrides --workdir.")
config_flags.DEFINE_config_file("config", None, "Config file to use instead of the one saved "
                                "with the checkpoint (must describe the same model).")
flags.DEFINE_list("ood", None, "OOD test sets, comma separated (default: the config's data.ood), "
                  "e.g. mnist,kmnist or svhn_cropped.")
flags.DEFINE_integer("iw_samples", None, "Importance samples S of the ELBO: the paper's "
                     "LLR^{>k}_S = L_S - L^{>k} (eqs. 9-10; L^{>k} keeps one sample).")
flags.DEFINE_integer("iw_samples_elbo", None, "Same as --iw_samples (its long name).")
flags.DEFINE_integer("iw_samples_lk", None, "Importance samples of L^{>k} (default 1, the paper's "
                     "estimator); > 1 weights both bounds, another estimator.")
flags.DEFINE_list("k", None, "Values of k to score (default: every k in 1..L-1).")
flags.DEFINE_string("detector", None, "The verdict's per-input rule written to threshold.json: "
                    "joint, any_k (the paper's rule), any_k_typ, or llr_k<k> for one k "
                    "(default: the config's eval.detector).")
flags.DEFINE_string("data_dir", None, "Folder with the .npz datasets (default: $HVAE_DATA_DIR).")
flags.DEFINE_string("output", None, "Output folder (default: <workdir>/eval for a training "
                    "workdir, else workdirs/<checkpoint name>/eval).")
flags.DEFINE_integer("max_examples", None, "Score at most this many images per data set (a "
                     "seeded subset; -1 = all; default: the config's).")
flags.DEFINE_integer("batch_size", None, "Evaluation batch size.")
flags.DEFINE_string("compilation_cache_dir", None, "JAX's persistent compilation cache folder "
                    "(default: the config's compilation_cache_dir; '' turns it off).")
flags.DEFINE_integer("seed", 0, "Seed for the samples and the equal-size subsampling.")
flags.DEFINE_string("scores", "paper", "'paper' (ELBO, L^{>k}, LLR^{>k} only), 'all', or a comma "
                    "list of baselines: iw_nll, typicality, complexity, bg_llr, waic, regret.")
flags.DEFINE_string("background_checkpoint", None, "bg_llr: a model trained on perturbed inputs "
                    "(train.py --config.data.perturb_rate=0.2); default: <run>_bg if it exists.")
flags.DEFINE_list("ensemble_checkpoints", [], "waic: other independently seeded models of the same "
                  "architecture and data; the ensemble is these plus the scored model; "
                  "default: the <run>_seed<N> folders that exist.")
flags.DEFINE_integer("baseline_iw_samples", 100, "Importance samples S of log p(x) in the "
                     "likelihood-based baselines (iw_nll, typicality, complexity, bg_llr, waic, "
                     "and regret's before/after bounds).")
flags.DEFINE_integer("typicality_batch", 10, "Batch size M of the batch-level typicality test.")
flags.DEFINE_integer("regret_steps", 100, "Likelihood regret: Adam steps refitting the encoder.")
flags.DEFINE_float("regret_lr", 2e-4, "Likelihood regret: Adam learning rate.")
flags.DEFINE_float("regret_weight_decay", 5e-5, "Likelihood regret: L2 weight decay added to "
                   "the encoder's gradient (Xiao et al.'s code: 5e-5).")
flags.DEFINE_bool("no_cache", False, "Rescore even where a score cache for this very model, "
                  "images and settings exists (the caches are still written).")
flags.DEFINE_bool("verbose", False, "On an error, show the Python traceback too.")
multihost.define_flags()

def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cli.join_multihost()  # every process scores its share; process 0 writes
  from hvae_jax import api, compilation_cache, competing, evaluation, report  # pylint: disable=import-outside-toplevel
  from hvae_jax.checkpoints import CheckpointError  # pylint: disable=import-outside-toplevel
  with cli.errors_to_exit((ValueError, FileNotFoundError, RuntimeError, CheckpointError),
                          FLAGS.verbose):
    trained = api.load_model(FLAGS.checkpoint or FLAGS.workdir, FLAGS.config)
    settings = evaluation.EvalSettings.resolve(
        trained, ks=FLAGS.k, iw_samples=FLAGS.iw_samples, iw_samples_elbo=FLAGS.iw_samples_elbo,
        iw_samples_lk=FLAGS.iw_samples_lk, batch_size=FLAGS.batch_size,
        max_examples=FLAGS.max_examples, seed=FLAGS.seed, detector=FLAGS.detector)
    options = evaluation.EvalOptions(
        scores=FLAGS.scores, background=FLAGS.background_checkpoint,
        ensemble=tuple(FLAGS.ensemble_checkpoints), use_cache=not FLAGS.no_cache,
        baseline=competing.BaselineOptions(
            iw_samples=FLAGS.baseline_iw_samples, typicality_batch=FLAGS.typicality_batch,
            regret_steps=FLAGS.regret_steps, regret_lr=FLAGS.regret_lr,
            regret_weight_decay=FLAGS.regret_weight_decay))
    c = trained.config
    compilation_cache.enable_compilation_cache(c.compilation_cache_dir
                                               if FLAGS.compilation_cache_dir is None
                                               else FLAGS.compilation_cache_dir)
    results = evaluation.evaluate(trained, settings, options, ood=FLAGS.ood or list(c.data.ood),
                                  output_dir=FLAGS.output, data_dir=FLAGS.data_dir)
  print(report.markdown_report(results))
  print(f"Wrote results, plots and the threshold to {results['output_dir']}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags_or_exit)
