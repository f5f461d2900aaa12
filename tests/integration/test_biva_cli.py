"""BIVA end to end: the paper config's acceptance commands as a user types them."""
import json
import os
import subprocess
import sys

from tests.helpers import REPO


def test_cifar_biva_trains_then_evaluates_against_svhn_end_to_end(tmp_path):
  """The issue's acceptance run, shrunk: `train.py --config=configs/cifar_biva.py:smoke` on
  tfds mock CIFAR10, then `evaluate.py --ood=svhn`, as a user types them."""
  workdir, out = tmp_path / "biva", tmp_path / "eval"
  run = lambda script, *args: subprocess.run([sys.executable, os.path.join(REPO, script), *args],
                                             cwd=REPO, capture_output=True, text=True)
  r = run("train.py", "--config=configs/cifar_biva.py:smoke", "--config.data.source=mock",
          f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert (workdir / "checkpoints" / "6").is_dir()
  r = run("evaluate.py", f"--workdir={workdir}", "--ood=svhn", f"--output={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((out / "results.json").read_text())
  metrics = res["ood"]["svhn_cropped"]["metrics"]
  # 3 layers: k = 1, 2 (each k puts both the BU and TD latents of the k lowest layers on the prior)
  assert set(metrics) >= {"elbo", "lk_k1", "lk_k2", "llr_k1", "llr_k2"}
  assert all(0.0 <= m["auroc"] <= 1.0 for m in metrics.values())
  assert "| llr_k2 |" in (out / "results.md").read_text()
