"""Score in-distribution and OOD test sets with ELBO, L^{>k} and LLR^{>k} (Havtorn et al. 2021).

  python evaluate.py --workdir=workdirs/fmnist --ood=mnist --iw_samples=250 --output=out/fmnist

Every setting is a config key (`config.eval`, `config.baselines` in hvae_jax/config.py), taken
from the checkpoint's saved config and set with --eval.<key>=... / --baselines.<key>=...;
the short flags below (--iw_samples, --k, --max_examples, ...) set the same keys.
Add the paper's competing scores (hvae_jax/baselines/) with --scores, e.g.
  --scores=all --background_checkpoint=workdirs/fmnist_bg --ensemble_checkpoints=a,b,c,d
Without those two flags, bg_llr and waic use the models scripts/reproduce_baselines.sh trains
beside the run (<run>_bg, <run>_seed<N>); 'all' skips them, with a note, if there are none.

Writes results.json, results.md (tables shaped like the paper's), ROC and histogram PNGs, the
calibrated threshold, per set the flagged images (<set>_most_ood.png, <set>_least_ood.png,
<set>_scores.csv) and per-example score caches into --output.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from hvae_jax import cli, config as config_lib, multihost
from hvae_jax.config import DEFAULT_WORKDIR
from hvae_jax.options import OPTIONS

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "Training workdir (uses its latest checkpoint); "
                    "the default is train.py's.")
flags.DEFINE_string("checkpoint", None, "A checkpoint: a workdir, its checkpoints/ folder, a step "
                    "directory, or a shipped model under pretrained/. Overrides --workdir.")
_BASE = config_lib.base_config()  # the keys and types of the evaluation's flags
with cli.config_flag_definitions():
  config_flags.DEFINE_config_file("config", None, "Config file to use instead of the one saved "
                                  "with the checkpoint (must describe the same model).")
  config_flags.DEFINE_config_dict("eval", _BASE.eval, "The evaluation's "
                                  "settings over the checkpoint's config.eval: --eval.<key>=...")
  config_flags.DEFINE_config_dict("baselines", _BASE.baselines, "The "
                                  "competing scores' settings over config.baselines: "
                                  "--baselines.<key>=...")
flags.DEFINE_list("ood", None, "OOD test sets, comma separated (default: the config's data.ood), "
                  "mixed freely: registry names (mnist, kmnist, svhn_cropped, "
                  "fashion_mnist+noise), folder:PATH (a folder of images), npz:PATH (an archive "
                  "of uint8 image arrays) or tfds:NAME (any tensorflow_datasets name).")
_DEFINE = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
           tuple: flags.DEFINE_list, bool: flags.DEFINE_bool}
for _name, (_key, _, _help) in OPTIONS.items():  # one flag per short option name
  if _help is not None:
    _section, _leaf = _key.split(".")
    _DEFINE[type(_BASE[_section][_leaf])](
        _name, None, f"{_help} Sets --{_key}.")
flags.DEFINE_bool("no_cache", False, "Rescore even where a score cache for this very model, "
                  "images and settings exists (the caches are still written). Sets "
                  "--eval.use_cache=false.")
flags.DEFINE_string("data_dir", None, "Folder with the .npz datasets (default: $HVAE_DATA_DIR).")
flags.DEFINE_string("output", None, "Output folder (default: <workdir>/eval for a training "
                    "workdir, else workdirs/<checkpoint name>/eval).")
flags.DEFINE_string("compilation_cache_dir", None, "JAX's persistent compilation cache folder "
                    "(default: the config's compilation_cache_dir; '' turns it off).")
flags.DEFINE_bool("verbose", False, "On an error, show the Python traceback too.")
multihost.define_flags()


def _options() -> dict:
  """The evaluation options the command line set: --eval.* / --baselines.* and short flags."""
  out = {f"{section}.{k}": v for section in ("eval", "baselines")
         for k, v in FLAGS[section].override_values.items()}
  out.update({name: FLAGS[name].value for name, (_, _, h) in OPTIONS.items()
              if h is not None and FLAGS[name].present})
  if FLAGS.no_cache:
    out["use_cache"] = False
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cli.join_multihost()  # every process scores its share; process 0 writes
  # JAX and the models load only after the flags are known good and the processes joined.
  from hvae_jax import api, compilation_cache, evaluation  # pylint: disable=import-outside-toplevel
  from hvae_jax.checkpoints import CheckpointError  # pylint: disable=import-outside-toplevel
  with cli.errors_to_exit((ValueError, FileNotFoundError, RuntimeError, CheckpointError),
                          FLAGS.verbose):
    trained = api.load_model(FLAGS.checkpoint or FLAGS.workdir, FLAGS.config)
    compilation_cache.enable_compilation_cache(trained.config.compilation_cache_dir
                                               if FLAGS.compilation_cache_dir is None
                                               else FLAGS.compilation_cache_dir)
    results = api.evaluate(trained, FLAGS.ood or list(trained.config.data.ood),
                           output_dir=FLAGS.output, data_dir=FLAGS.data_dir,
                           update_threshold=False, **_options())
  print(evaluation.markdown_report(results))
  print(f"Wrote results, plots and the threshold to {results['output_dir']}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags_or_exit)
