"""Train the background model of Ren et al. (2019) for the bg_llr score of evaluate.py.

  python scripts/train_background.py --config=configs/fmnist_hvae.py --workdir=workdirs/fmnist_bg \
      --perturb_rate=0.2

The training set (and the test split used for the test bits/dim) is perturbed once, seeded:
every pixel value is replaced with probability --perturb_rate by a uniform draw from
{0, ..., 255} (for greyscale data the training binarization then makes it a fair random
bit), written to <workdir>/perturbed_data/<name>.npz, and the unchanged training code
(train_lib.train_and_evaluate) trains on it. Rerunning resumes. Then:

  python evaluate.py --workdir=workdirs/fmnist --scores=bg_llr \
      --background_checkpoint=workdirs/fmnist_bg

Differences from Ren et al.: the perturbation is drawn once per training image rather than
afresh each epoch, and no extra L2 penalty is added to the background model.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/fmnist_hvae.py", "Experiment config file "
                                "(the same architecture as the model it will score against).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the perturbed data go here.")
flags.DEFINE_float("perturb_rate", 0.2, "Ren et al.'s mu: probability that a pixel value is "
                   "replaced by uniform noise.")
flags.DEFINE_integer("perturb_seed", 0, "Seed of the perturbation.")
flags.DEFINE_string("data_dir", None, "Folder with the original .npz datasets (default: "
                    "$HVAE_DATA_DIR).")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from hvae_jax import baselines, train_lib  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  data_dir = FLAGS.data_dir or config.data.data_dir or None
  try:
    perturbed = baselines.write_perturbed_dataset(
        config.data.name, (config.data.train_split, config.data.test_split), FLAGS.perturb_rate,
        FLAGS.perturb_seed, os.path.join(FLAGS.workdir, "perturbed_data"), data_dir,
        config.data.source)
    with config.unlocked():
      config.data.data_dir = os.path.abspath(perturbed)
      config.data.source = "npz"
    print(f"Training the background model on {perturbed} (perturbation rate "
          f"{FLAGS.perturb_rate}).")
    train_lib.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, RuntimeError, train_lib.TrainingError,
          train_lib.checkpoints.CheckpointError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  from hvae_jax.config import parse_flags_or_exit  # pylint: disable=wrong-import-position
  app.run(main, flags_parser=parse_flags_or_exit)
