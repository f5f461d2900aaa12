"""evaluate.py end to end on a tiny trained checkpoint, the library API, and clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hvae_jax import api, checkpoints
from tests.helpers import DATA_DIR, REPO, fmnist_slice, mnist_slice, tiny_config


def _run(*args, cwd=REPO):
  env = dict(os.environ, HVAE_DATA_DIR=DATA_DIR)
  return subprocess.run([sys.executable, os.path.join(REPO, "evaluate.py"), *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600, check=False)


def test_evaluate_cli_writes_tables_json_plots_and_threshold(tiny_workdir, tmp_path):
  out = tmp_path / "eval"
  cache = tmp_path / "jax_cache"
  r = _run(f"--workdir={tiny_workdir}", "--ood=mnist", "--max_examples=120", "--iw_samples=2",
           f"--output={out}", f"--compilation_cache_dir={cache}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert any(cache.iterdir()), "the persistent compilation cache was not written"
  for f in ("results.json", "results.md", "roc_mnist.png", "hist_mnist.png", "threshold.json",
            "scores_fashion_mnist_test.npz", "scores_mnist_test.npz"):
    assert (out / f).exists(), f
  res = json.loads((out / "results.json").read_text())
  m = res["ood"]["mnist"]["metrics"]
  assert set(m) >= {"elbo", "lk_k1", "lk_k2", "llr_k1", "llr_k2"}
  assert all(0.0 <= v["auroc"] <= 1.0 for v in m.values())
  table = (out / "results.md").read_text()
  assert "| llr_k1 |" in table and "Average bits/dim" in table
  # The cache is reused: a second run with the same settings does not rescore.
  mtime = (out / "scores_mnist_test.npz").stat().st_mtime
  r = _run(f"--workdir={tiny_workdir}", "--ood=mnist", "--max_examples=120", "--iw_samples=2",
           f"--output={out}")
  assert r.returncode == 0 and (out / "scores_mnist_test.npz").stat().st_mtime == mtime


def test_evaluate_cli_clear_errors(tiny_workdir, tmp_path):
  r = _run(f"--workdir={tmp_path / 'nothing'}")
  assert r.returncode != 0 and "no checkpoint found" in r.stderr and "Traceback" not in r.stderr
  r = _run(f"--workdir={tiny_workdir}", "--ood=not_a_dataset")
  assert r.returncode != 0 and "Unknown dataset" in r.stderr and "Traceback" not in r.stderr
  r = _run(f"--workdir={tiny_workdir}", "--scores=bg_llr")  # no background model anywhere
  assert r.returncode != 0 and "needs --background_checkpoint" in r.stderr
  assert "Traceback" not in r.stderr
  r = _run(f"--workdir={tiny_workdir}", "--config=configs/fmnist_hvae.py")  # other architecture
  assert r.returncode != 0 and "checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_cli_reads_train_py_default_workdir(tiny_workdir, tmp_path):
  # `python train.py --config=...` then `python evaluate.py --ood=...`: no --workdir on either.
  r = _run("--ood=mnist", cwd=tmp_path)
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert "no checkpoint found" in r.stderr and os.path.join("workdirs", "default") in r.stderr
  (tmp_path / "workdirs").mkdir()
  os.symlink(tiny_workdir, tmp_path / "workdirs" / "default")
  r = _run("--ood=mnist", "--max_examples=32", "--k=1", f"--output={tmp_path / 'eval'}",
           cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "| llr_k1 |" in r.stdout and (tmp_path / "eval" / "results.json").exists()


def test_library_api_scores_raw_images_and_rejects_bad_ones(tiny_workdir):
  m = api.load_model(tiny_workdir)
  s = m.score(fmnist_slice(7)[..., 0])  # [N, H, W] greyscale is accepted too
  assert set(s) >= {"elbo", "llr_k1", "lk_k2_bpd"} and s["elbo"].shape == (7,)
  assert np.all(np.isfinite(s["llr_k1"]))
  # Any batch size: one compiled shape serves a partial batch.
  s2 = m.score(mnist_slice(3), batch_size=4)
  assert s2["llr_k2"].shape == (3,)
  with pytest.raises(ValueError, match="shape"):
    m.score(np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    m.score(np.full((2, 28, 28, 1), 0.5, np.float32))
  with pytest.raises(ValueError, match="threshold"):
    m.is_ood(fmnist_slice(2))


def test_config_mismatch_is_a_checkpoint_error(tiny_workdir):
  c = tiny_config()
  c.model.blocks = (((16, 3, 2),), ((16, 3, 2),), ((16, 3, 1),))
  with pytest.raises(checkpoints.CheckpointError, match="checkpoint"):
    api.load_model(tiny_workdir, c)
