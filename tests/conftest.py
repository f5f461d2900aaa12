"""Test setup. Runs before any test module imports jax."""
import os

# Two simulated CPU devices, so the sharded (device mesh) code paths are really exercised.
# Must be set before jax initialises its backends; scripts/test.sh sets it too.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()

# Several tests compile the same tiny model (train step, scorer): a persistent compilation
# cache shared by the session turns the repeats into cache hits.
import tempfile  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("HVAE_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(),
                                                                     "hvae_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# No test reaches the internet or the user's download cache (subprocesses inherit this): data
# downloads go to a throwaway folder from a port where nothing listens; test_download.py
# serves its files from a local server.
os.environ["HVAE_CACHE_DIR"] = tempfile.mkdtemp(prefix="hvae_jax_test_downloads_")
os.environ["HVAE_DATA_MIRROR"] = "http://127.0.0.1:9/"


import pytest  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """A tiny FashionMNIST model trained for 40 steps, shared by the end-to-end tests."""
  from hvae_jax import training  # pylint: disable=import-outside-toplevel
  from tests.helpers import tiny_config  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("tiny_workdir")
  config = tiny_config()
  config.train.max_steps = 40
  config.train.sample_grid = 0
  training.train_and_evaluate(config, str(workdir))
  return str(workdir)
