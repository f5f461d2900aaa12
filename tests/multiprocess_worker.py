"""One process of the multi-process test (tests/integration/test_multiprocess.py): joins the run, trains
the tiny config to `max_steps` in a shared workdir (resuming from its checkpoint), scores test
images; process 0 writes the scores. Stopped by a signal, it exits 130 as train.py does.

python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR MAX_STEPS SCORES.npz
"""
import os
import sys
import tempfile

import jax
import numpy as np

# The test session's compilation cache: a rerun of the test skips most compiling.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("HVAE_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(),
                                                                     "hvae_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def main(process_id: int, num_processes: int, port: int, workdir: str, max_steps: int,
         scores_path: str) -> None:
  from hvae_jax import multihost  # pylint: disable=import-outside-toplevel
  # A short heartbeat: a killed peer aborts the other process in seconds, not JAX's 100.
  multihost.initialize(f"127.0.0.1:{port}", num_processes, process_id, heartbeat_timeout_s=20)
  from hvae_jax import api, training  # pylint: disable=import-outside-toplevel
  from tests import helpers  # pylint: disable=import-outside-toplevel
  try:
    training.train_and_evaluate(helpers.multiprocess_config(max_steps), workdir)
  except KeyboardInterrupt:  # SIGTERM: saved (training said which step); train.py's code
    sys.exit(130)
  scores = api.load_model(workdir).score(helpers.fmnist_slice(helpers.MULTIPROCESS_IMAGES))
  if jax.process_index() == 0:
    np.savez(scores_path, **scores)


if __name__ == "__main__":
  a = sys.argv[1:]
  main(int(a[0]), int(a[1]), int(a[2]), a[3], int(a[4]), a[5])
