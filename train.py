"""Train an HVAE/BIVA: python train.py --config=configs/fmnist_hvae.py --workdir=workdirs/fmnist.

Rerunning the same command resumes from the latest checkpoint in --workdir.
Override any knob from the command line, e.g. --config.train.batch_size=64.
Ctrl-C saves the last completed step and stops; a second Ctrl-C quits without saving.
"""
import os
from typing import Optional

from absl import app, flags, logging
from ml_collections import config_flags

from hvae_jax import cli, config as config_lib, data, interrupts, multihost
from hvae_jax.config import DEFAULT_WORKDIR

FLAGS = flags.FLAGS
with cli.config_flag_definitions():
  config_flags.DEFINE_config_file("config", "configs/fmnist_hvae.py", "Experiment config file.",
                                  lock_config=True)
flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "Checkpoints, metrics and samples go here.")
flags.DEFINE_string("data_dir", None, "Folder with the offline .npz datasets (or tfds data_dir); "
                    "defaults to $HVAE_DATA_DIR.")
multihost.define_flags()
flags.DEFINE_bool("verbose", False, "On an error, show the full traceback instead of one line.")


def _data_dir_problem(config) -> Optional[str]:
  """Why the data folder the run would read cannot be right, naming where it was set."""
  if FLAGS.data_dir:
    where, path = "--data_dir", FLAGS.data_dir
  elif config.data.data_dir:
    where, path = "--config.data.data_dir", config.data.data_dir
  else:
    where, path = f"${data.DATA_DIR_ENV}", data.default_data_dir()
  # tfds may create its data_dir to download into; the offline archives must already be there.
  if path is None or config.data.source not in ("auto", "npz"):
    return None
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    return (f"{where}={path}: no such directory; pass the folder holding "
            f"{config.data.name}.npz, or leave it unset to find or download the data.")
  if not os.path.isdir(path):
    return f"{where}={path} is a file; pass the folder holding {config.data.name}.npz."
  return None


def _flag_problem(config) -> Optional[str]:
  """The first command-line flag whose value cannot work, as one line, before any work."""
  if not FLAGS.workdir:
    return "--workdir is empty; pass the directory for checkpoints, metrics and samples."
  if os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
    return (f"--workdir={FLAGS.workdir} is a file, not a directory; pass a new or existing "
            "training directory.")
  return multihost.flags_problem() or _data_dir_problem(config)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = FLAGS.config
  with cli.errors_to_exit((ValueError,), FLAGS.verbose):
    problem = _flag_problem(config)
    if problem:
      raise ValueError(problem)
    config_lib.validate(config)  # again in train_and_evaluate; here before JAX starts up
  # SIGTERM stops the start-up as Ctrl-C does, from before JAX loads until the training loop's
  # own handler takes over (it hands this one back), so no moment of the run dies silently.
  with interrupts.InterruptOnSigterm():
    try:
      # RuntimeError, ValueError: no coordinator found or reachable.
      with cli.errors_to_exit((RuntimeError, ValueError), FLAGS.verbose):
        import jax  # pylint: disable=import-outside-toplevel
        multihost.initialize_from_flags()
        from hvae_jax import checkpoints, training  # pylint: disable=import-outside-toplevel
        print(f"JAX devices: {jax.devices()}")  # starts the backends: seconds on some machines
      if FLAGS.data_dir:
        config.data.data_dir = FLAGS.data_dir
      with cli.errors_to_exit((ValueError, OSError, training.TrainingError,
                               checkpoints.CheckpointError), FLAGS.verbose):
        training.train_and_evaluate(config, FLAGS.workdir)
    except KeyboardInterrupt as err:
      if FLAGS.verbose:
        raise
      if not isinstance(err, interrupts.Interrupted):  # else the loop has said what was saved
        print("Interrupted during start-up, before training began; rerun the same command.")
      raise SystemExit(130) from None


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags_or_exit)
