"""Train an HVAE/BIVA: python train.py --config=configs/fmnist_hvae.py --workdir=workdirs/fmnist.

Rerunning the same command resumes from the latest checkpoint in --workdir.
Override any knob from the command line, e.g. --config.train.batch_size=64.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from hvae_jax.config import DEFAULT_WORKDIR, parse_flags_or_exit

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/fmnist_hvae.py", "Experiment config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "Checkpoints, metrics and samples go here.")
flags.DEFINE_string("data_dir", None, "Folder with the offline .npz datasets (or tfds data_dir); "
                    "defaults to $HVAE_DATA_DIR.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  import jax  # pylint: disable=import-outside-toplevel
  if FLAGS.distributed:
    jax.distributed.initialize()
  from hvae_jax import train_lib  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  if FLAGS.data_dir:
    config.data.data_dir = FLAGS.data_dir
  print(f"JAX devices: {jax.devices()}")
  try:
    train_lib.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, train_lib.TrainingError,
          train_lib.checkpoints.CheckpointError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags_or_exit)
