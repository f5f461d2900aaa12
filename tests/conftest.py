"""Test setup. Runs before any test module imports jax."""
import os

# Two simulated CPU devices, so the sharded (pmap / mesh) code paths are really exercised.
# Must be set before jax initialises its backends; scripts/test.sh sets it too.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=2").strip()
