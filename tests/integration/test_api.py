"""The public API of `hvae_jax` (the README's "Python API" examples, as tests)."""
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

import hvae_jax
from hvae_jax import baselines, detectors, stat_names
from tests.helpers import DATA_DIR, REPO, fmnist_slice, mnist_slice

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(DATA_DIR, "fashion_mnist.npz")),
                                reason="offline data not found (set HVAE_DATA_DIR)")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
  """The README example, verbatim apart from the paths: train tiny, evaluate, score."""
  workdir = str(tmp_path_factory.mktemp("api") / "tiny")
  # --- README: Python API ---
  model = hvae_jax.train("configs/tiny.py", workdir, data_dir=DATA_DIR,
                         overrides={"train.max_steps": 30, "train.sample_grid": 0})
  results = hvae_jax.evaluate(model, ood=["mnist"], max_examples=200)  # writes <workdir>/eval
  auroc = results["ood"]["mnist"]["metrics"]["llr_k1"]["auroc"]
  images = mnist_slice(8)                       # any uint8 [N, 28, 28(, 1)] images
  scores = model.score(images)                  # {'elbo': [N], 'llr_k1': [N], ...}
  flags = model.is_ood(images)                  # [N] bool, threshold from evaluate()
  # --- end of README example ---
  return dict(workdir=workdir, model=model, results=results, auroc=auroc, images=images,
              scores=scores, flags=flags)


def test_public_names():
  for name in ("load_model", "TrainedModel", "train", "evaluate", "build_model", "base_config",
               "load_config", "THRESHOLD_FILE", "__version__"):
    assert name in hvae_jax.__all__ and hasattr(hvae_jax, name), name
  from hvae_jax import api
  assert hvae_jax.TrainedModel is api.TrainedModel
  assert hvae_jax.THRESHOLD_FILE == "threshold.json"
  with pytest.raises(AttributeError):
    hvae_jax.no_such_name  # pylint: disable=pointless-statement


def test_import_is_light():
  code = ("import sys, hvae_jax; heavy = [m for m in ('jax', 'flax', 'orbax', 'optax', "
          "'tensorflow_datasets', 'matplotlib') if m in sys.modules]; print(heavy)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True, env=dict(os.environ, PYTHONPATH=REPO)).stdout
  assert out.strip() == "[]", out


def test_base_config_and_load_config():
  c = hvae_jax.base_config()
  assert c.data.name == "fashion_mnist" and c.model.name == "hvae"
  # A name from configs/, a path relative to the repository, an absolute path, a ConfigDict.
  by_name = hvae_jax.load_config("tiny", {"train.max_steps": 7})
  by_path = hvae_jax.load_config(os.path.join(REPO, "configs", "tiny.py"))
  rel = hvae_jax.load_config("configs/tiny.py")
  assert by_name.train.max_steps == 7 and by_path.train.max_steps == rel.train.max_steps == 60
  copy = hvae_jax.load_config(by_path, {"train.batch_size": 64})
  assert copy.train.batch_size == 64 and by_path.train.batch_size == 32  # input not modified
  assert hvae_jax.load_config("configs/cifar_hvae.py:l4").data.name == "cifar10"
  with pytest.raises(ValueError, match="train.nope"):
    hvae_jax.load_config("tiny", {"train.nope": 1})
  with pytest.raises(ValueError, match="model.dtype"):
    hvae_jax.load_config("tiny", {"model.dtype": "float64"})
  with pytest.raises(FileNotFoundError):
    hvae_jax.load_config("configs/missing.py")


def test_saved_configs_from_before_the_activation_keys_keep_their_activations():
  """The paper configs now use the reference's ReLU before the latent layers and the
  likelihood; a checkpoint saved before those keys existed was trained with ELU / leaky ReLU
  and must load with them, while a saved value (or a new checkpoint's) is kept as saved."""
  from hvae_jax import config as config_lib
  assert hvae_jax.base_config().model.latent_activation == "relu"
  saved = hvae_jax.load_config("fmnist_hvae").to_dict()
  for key in ("latent_activation", "likelihood_activation", "biva_variant", "colour_input"):
    del saved["model"][key]
  old = config_lib.from_saved(saved)
  assert (old.model.latent_activation, old.model.likelihood_activation) == ("elu", "leaky_relu")
  saved["model"]["latent_activation"] = "swish"
  assert config_lib.from_saved(saved).model.latent_activation == "swish"
  new = config_lib.from_saved(hvae_jax.load_config("fmnist_hvae").to_dict())
  assert (new.model.latent_activation, new.model.likelihood_activation) == ("relu", "relu")
  shipped = hvae_jax.load_model(os.path.join(REPO, "pretrained", "fmnist_hvae_small"))
  assert shipped.config.model.latent_activation == "elu"
  # The same for BIVA's wiring and the colour scaling, defaults that changed after checkpoints
  # were saved: an old config keeps biva-pytorch's and [-1, 1].
  assert (old.model.biva_variant, old.model.colour_input) == ("biva-pytorch", "signed")
  assert (new.model.biva_variant, new.model.colour_input) == ("hvae-oodd", "unit")


def test_build_model_defaults_to_the_datasets_image_shape():
  import jax
  from hvae_jax import preprocess
  c = hvae_jax.load_config("tiny")
  model = hvae_jax.build_model(c)
  assert model.image_shape == (28, 28, 1)
  x = preprocess.eval_binarize(fmnist_slice(4), 0)
  # Shapes only (tracing, no compilation): init, then prior samples.
  variables = jax.eval_shape(model.init, jax.random.key(0), x, jax.random.key(1))
  samples = jax.eval_shape(lambda v, k: model.apply(v, k, 3, method=model.sample), variables,
                           jax.random.key(2))
  assert samples.shape == (3, 28, 28, 1)
  assert hvae_jax.build_model(hvae_jax.load_config("configs/cifar_hvae.py")).image_shape == (32, 32, 3)


def test_readme_example_trains_evaluates_and_scores(readme_run):
  r = readme_run
  model, workdir = r["model"], r["workdir"]
  assert isinstance(model, hvae_jax.TrainedModel)
  assert os.path.isdir(os.path.join(workdir, "checkpoints"))
  # evaluate() wrote the report next to the model and calibrated a threshold.
  for f in ("results.md", "results.json", "roc_mnist.png", "hist_mnist.png", "threshold.json"):
    assert os.path.exists(os.path.join(workdir, "eval", f)), f
  res = r["results"]
  assert {"elbo", "llr_k1", "llr_k2"} <= set(res["ood"]["mnist"]["metrics"])
  assert 0.0 <= r["auroc"] <= 1.0
  assert res["output_dir"] == os.path.join(workdir, "eval")
  assert model.threshold.to_json() == res["threshold"]
  # score: one float32 [N] array per score, finite; llr = elbo - L^{>k}.
  s = r["scores"]
  assert {"elbo", "elbo_bpd", "lk_k1", "lk_k2", "llr_k1", "llr_k2"} <= set(s)
  for v in s.values():
    assert v.shape == (8,) and v.dtype == np.float32 and np.all(np.isfinite(v))
  np.testing.assert_allclose(s["llr_k1"], s["elbo"] - s["lk_k1"], rtol=1e-5, atol=1e-3)
  # is_ood: the calibrated detector applied to the same scores (same images, same seed).
  th = model.threshold
  assert r["flags"].dtype == bool and r["flags"].shape == (8,)
  if th.iw_samples_elbo == th.iw_samples_lk == 1 and set(th.ks) == {1, 2}:
    np.testing.assert_array_equal(r["flags"], th.detector.score(s)[0] > th.value)


def test_load_model_finds_the_threshold_evaluate_wrote(readme_run):
  reloaded = hvae_jax.load_model(readme_run["workdir"])
  with open(os.path.join(readme_run["workdir"], "eval", "threshold.json"), encoding="utf-8") as f:
    assert reloaded.threshold.to_json() == json.load(f)
  images = readme_run["images"][..., 0]  # [N, 28, 28] works too
  np.testing.assert_array_equal(reloaded.is_ood(images), readme_run["flags"])
  np.testing.assert_allclose(reloaded.score(images)["elbo"], readme_run["scores"]["elbo"],
                             rtol=1e-5)


def test_train_takes_a_config_dict_and_resumes(readme_run):
  # Same workdir, same max_steps: resumes at the last step, trains nothing, returns the model.
  config = hvae_jax.load_config("tiny", {"train.max_steps": 30, "train.sample_grid": 0})
  config.data.data_dir = DATA_DIR
  before = config.to_dict()
  model = hvae_jax.train(config, readme_run["workdir"])
  assert config.to_dict() == before
  assert isinstance(config, ml_collections.ConfigDict)
  np.testing.assert_allclose(model.score(readme_run["images"])["elbo"],
                             readme_run["scores"]["elbo"], rtol=1e-5)


def test_evaluate_with_arrays_and_a_path(readme_run, tmp_path):
  out = tmp_path / "eval"
  res = hvae_jax.evaluate(readme_run["workdir"], ood={"digits": mnist_slice(60, seed=3)},
                          in_test=fmnist_slice(60, seed=3), in_train=fmnist_slice(60, "train"),
                          output_dir=str(out), ks=(1,), batch_size=60)
  assert set(res["ood"]) == {"digits"}
  combined = set(detectors.combined((1,)))  # the per-input detectors' rows
  terms = {"recon", "kl_l1", "kl_l2", "kl_l3", "recon_k1", "kl_k1_l2", "kl_k1_l3"}
  assert set(res["ood"]["digits"]["metrics"]) == {"elbo", "lk_k1", "llr_k1"} | terms | combined
  assert (out / "roc_digits.png").exists() and (out / "threshold.json").exists()
  with pytest.raises(ValueError, match="shape"):
    hvae_jax.evaluate(readme_run["model"], ood={"bad": np.zeros((4, 32, 32, 3), np.uint8)},
                      in_test=fmnist_slice(8), in_train=fmnist_slice(8), output_dir=str(out))


def test_evaluate_adds_the_competing_scores(readme_run, tmp_path):
  # The Python twin of `evaluate.py --scores=...`: an ensemble member passed by path, and
  # 'all' skips bg_llr (no background model given or beside the run) and names what to do.
  member = tmp_path / "member"
  shutil.copytree(readme_run["workdir"], member)
  out = tmp_path / "eval"
  res = hvae_jax.evaluate(readme_run["workdir"], ood={"digits": mnist_slice(40, seed=3)},
                          in_test=fmnist_slice(40, seed=3), in_train=fmnist_slice(100, "train"),
                          output_dir=str(out), ks=(1,), batch_size=40, scores="all",
                          ensemble=[str(member)], baseline_iw_samples=2, regret_steps=1)
  names = set(res["ood"]["digits"]["metrics"])
  paper = {n for n in names if stat_names.is_term(n)} | {"elbo", "lk_k1", "llr_k1"}
  assert paper >= {"recon", "kl_l1", "recon_k1"}
  assert names == (paper | set(detectors.combined((1,)))
                   | (set(baselines.SCORE_NAMES) - {"bg_llr"}))
  assert res["extra_scores_settings"]["ensemble"] == [readme_run["workdir"], str(member)]
  assert res["extra_scores_settings"]["regret_steps"] == 1
  with pytest.raises(ValueError, match="bg_llr needs --background_checkpoint"):
    hvae_jax.evaluate(readme_run["workdir"], ood={"digits": mnist_slice(8)},
                      in_test=fmnist_slice(8), in_train=fmnist_slice(8), output_dir=str(out),
                      scores="bg_llr")


def test_import_sets_cpu_xla_defaults_unless_the_user_chose():
  """The XLA:CPU defaults measured in bench/RESULTS.md (YNNPACK fusions off: training 1.7x
  faster; the memory-minimising schedule: 200 MB less scratch) are set, each one not forced."""
  code = "import os, hvae_jax; print(os.environ.get('XLA_FLAGS', ''))"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, check=True).stdout.strip().split()
  assert run() == ["--xla_cpu_experimental_ynn_fusion_type=",
                   "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"]
  env["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type=default"
  assert run() == ["--xla_cpu_experimental_ynn_fusion_type=default",
                   "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"]
  env["XLA_FLAGS"] = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT"
  assert run() == ["--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT",
                   "--xla_cpu_experimental_ynn_fusion_type="]


def test_release_freed_returns_free_heap_pages_to_the_os():
  """Freed heap below a live allocation stays resident under glibc until malloc_trim: the
  compiler's and the init pass's leftovers that training.compile_train_step hands back."""
  from hvae_jax import host_memory  # pylint: disable=import-outside-toplevel
  code = """
import ctypes, ctypes.util
from hvae_jax import host_memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_mb():
  return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
chunks = [libc.malloc(64 << 10) for _ in range(4096)]  # 256 MB of small (heap) blocks
for c in chunks:
  ctypes.memset(c, 1, 64 << 10)
fence = libc.malloc(64 << 10)  # keeps the freed blocks below the top of the heap
for c in chunks:
  libc.free(c)
before = rss_mb()
assert host_memory.release_freed()
print(before - rss_mb())
"""
  if not host_memory.release_freed():
    pytest.skip("no malloc_trim here (not glibc)")
  env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
  freed_mb = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, check=True).stdout)
  assert freed_mb > 200
