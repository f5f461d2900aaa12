"""The Colab notebook: its setup cell as Colab runs it, and the whole notebook top to bottom
with the shipped paper model (the default) and with a tiny model it trains (offline data)."""
import json
import os
import re
import sys
import time
import types

import jax
import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbclient import NotebookClient

from hvae_jax.thresholds import Threshold
from tests.helpers import DATA_DIR, REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "hvae_ood_colab.ipynb")


def _read():
  return nbformat.read(NOTEBOOK, as_version=4)


def _text(cell) -> str:
  parts = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      parts.append(out.get("text", ""))
    elif "data" in out:
      parts.append(out["data"].get("text/plain", ""))
      parts.append(out["data"].get("text/markdown", ""))
    elif out.get("output_type") == "error":
      parts.append("\n".join(out.get("traceback", [])))
  return "".join(parts)


def test_notebook_is_valid_and_committed_without_outputs():
  nb = _read()
  nbformat.validate(nb)
  assert nb.nbformat == 4
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_install_cell_only_runs_on_colab():
  src = "\n".join(c.source for c in _read().cells if c.cell_type == "code")
  assert '"google.colab" in sys.modules' in src
  lines = src.splitlines()
  shell = [l for l in lines if l.lstrip().startswith("!")]
  assert any("pip install" in l for l in shell)
  # Every shell command is indented under `if IN_COLAB:`, never at top level.
  assert all(l.startswith("    ") for l in shell), shell
  assert "if IN_COLAB:" in src


def _setup_cell_on_colab(monkeypatch, source: str) -> tuple[dict, list[str]]:
  """Runs the setup cell as Colab would (shell lines through IPython's transformer), with
  `SOURCE` set to `source`; returns its namespace and the shell commands it ran."""
  cell = next(c.source for c in _read().cells
              if c.cell_type == "code" and "IN_COLAB =" in c.source)
  assert 'SOURCE = "SET-ME' in cell
  if source:
    cell = re.sub(r'^SOURCE = ".*?"', f"SOURCE = {source!r}", cell, flags=re.M)
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.setattr(sys, "path", list(sys.path))
  commands, ns = [], {}
  # IPython fills {name} in shell lines from the cell's variables.
  shell = types.SimpleNamespace(system=lambda line: commands.append(line.format(**ns)))
  ns["get_ipython"] = lambda: shell
  python = TransformerManager().transform_cell(cell)  # `!cmd` -> get_ipython().system(...)
  exec(compile(python, "setup_cell", "exec"), ns)  # pylint: disable=exec-used
  return ns, commands


def test_setup_cell_stops_with_one_line_until_source_is_set(monkeypatch):
  with pytest.raises(SystemExit) as e:
    _setup_cell_on_colab(monkeypatch, "")
  message = str(e.value)
  assert "\n" not in message and message.startswith("Set SOURCE in the setup cell"), message
  for way in ("git URL", "folder holding a clone", ".whl"):
    assert way in message


def test_setup_cell_installs_from_a_fork_a_clone_or_a_wheel(monkeypatch, tmp_path):
  fork = "https://github.com/someone/hvae-jax"
  ns, commands = _setup_cell_on_colab(monkeypatch, fork)
  assert commands[0] == f"git clone -q --depth 1 {fork} /content/hvae-jax"
  assert 'pip install -q -e "/content/hvae-jax' in commands[1]
  assert ns["REPO_DIR"] == "/content/hvae-jax"
  ns, commands = _setup_cell_on_colab(monkeypatch, REPO)  # a clone already on the machine
  assert len(commands) == 1 and f'pip install -q -e "{REPO}' in commands[0]
  assert ns["REPO_DIR"] == REPO and sys.path[0] == REPO
  wheel = tmp_path / "hvae_jax-0.1.0-py3-none-any.whl"
  ns, commands = _setup_cell_on_colab(monkeypatch, str(wheel))
  assert len(commands) == 1 and f'"hvae-jax @ file://{wheel}"' in commands[0]
  assert ns["REPO_DIR"] == ""  # no configs/ or pretrained/: the notebook trains a model


def test_image_cell_converts_user_files_to_28x28_uint8(tmp_path, monkeypatch):
  """The 'your own images' cell, run alone: any size or mode in, MNIST-like uint8 out."""
  import numpy as np
  from PIL import Image
  folder = tmp_path / "mine"
  folder.mkdir()
  # A dark stroke on light paper, wider than tall, in colour: inverted, padded, resized.
  paper = np.full((60, 100, 3), 240, np.uint8)
  paper[20:40, 30:70] = 10
  Image.fromarray(paper).save(folder / "a_drawing.png")
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "b_black.jpg")
  (folder / "c_notes.txt").write_text("not an image")
  monkeypatch.setenv("HVAE_NOTEBOOK_IMAGES", str(folder / "*"))
  cell = next(c.source for c in _read().cells
              if c.cell_type == "code" and "def to_28x28_uint8" in c.source)
  ns = {"IN_COLAB": False, "np": np, "os": os, "glob": __import__("glob")}
  exec(compile(cell, "image_cell", "exec"), ns)  # pylint: disable=exec-used
  assert ns["names"] == ["a_drawing.png", "b_black.jpg"]  # the text file is skipped
  x = ns["my_images"]
  assert x.shape == (2, 28, 28) and x.dtype == np.uint8
  # Inverted: background dark, the stroke light, centred (vertical padding above and below).
  assert x[0, 0].max() < 30 and x[0, 14, 14] > 200 and x[0, 3].max() < 30
  assert x[1].max() == 0


def _execute(tmp_path, monkeypatch, **extra_env):
  """Runs the notebook in a fresh kernel in `tmp_path`; returns (notebook, text output, workdir)."""
  run_dir = tmp_path / "run"
  env = {
      "HVAE_NOTEBOOK_STEPS": "30",
      "HVAE_NOTEBOOK_EXAMPLES": "200",
      "HVAE_NOTEBOOK_WORKDIR": str(run_dir),
      "HVAE_NOTEBOOK_IMAGES": str(tmp_path / "no_images" / "*"),
      "HVAE_DATA_DIR": DATA_DIR,
      # This checkout's hvae_jax, not another installed copy.
      "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
      **extra_env,
  }
  cache = jax.config.jax_compilation_cache_dir  # conftest's shared persistent cache
  if cache:
    env["HVAE_NOTEBOOK_JAX_CACHE"] = cache
  for k, v in env.items():
    monkeypatch.setenv(k, v)  # the kernel inherits the environment (XLA_FLAGS: 2 CPU devices)
  nb = _read()
  # Per cell: the paper model's evaluation took over 900 s on a heavily loaded 2-core machine.
  NotebookClient(nb, timeout=1800, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  return nb, "\n".join(_text(c) for c in nb.cells if c.cell_type == "code"), run_dir


def _check_evaluation_and_verdicts(nb, text, run_dir, threshold_file):
  # Evaluation: the report, plots and threshold written and shown.
  eval_dir = run_dir / "eval"
  for f in ("results.md", "results.json", "roc_mnist.png", "hist_mnist.png", "threshold.json"):
    assert (eval_dir / f).exists(), f
  results = json.loads((eval_dir / "results.json").read_text())
  assert {"elbo", "llr_k1", "llr_k2"} <= set(results["ood"]["mnist"]["metrics"])
  assert "OOD evaluation: fashion_mnist" in text and "llr_k1   AUROC" in text
  # Reconstructions for k = 0, 1, 2 and prior samples, saved and shown inline.
  for f in ("data.png", "reconstructions_fashionmnist.png", "reconstructions_mnist.png",
            "samples.png"):
    assert (run_dir / "figures" / f).exists(), f
  n_png = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs)
  assert n_png >= 7, n_png  # data, ROC, histograms, 2 reconstructions, samples, verdicts
  # The verdict on the example images, with the calibrated threshold printed as its file has it.
  assert f"threshold from {threshold_file}:" in text
  threshold = json.loads(open(threshold_file, encoding="utf-8").read())
  assert json.dumps(Threshold.from_json(threshold).brief(), indent=1) in text
  # Every verdict names its cause: one of the statistics the threshold's detector reads.
  causes = set(threshold.get("features_of") or threshold["reference"])
  assert re.search(r"driven by (\S+)", text) and all(
      m in causes for m in re.findall(r"driven by (\S+)", text)), causes
  verdicts = [l for l in text.splitlines() if l.rstrip().endswith(("OUT-OF-DISTRIBUTION",
                                                                   "in-distribution"))]
  assert len(verdicts) == 8, verdicts
  assert sum("FashionMNIST test #" in l for l in verdicts) == 4
  return results, verdicts


def test_notebook_with_the_shipped_paper_model(tmp_path, monkeypatch):
  """The default path: the paper's model from pretrained/fmnist_hvae, nothing trained."""
  nb, text, run_dir = _execute(tmp_path, monkeypatch)
  shipped = os.path.join(REPO, "pretrained", "fmnist_hvae")
  assert f"Model: the shipped paper model {shipped}" in text
  step = max(int(d) for d in os.listdir(os.path.join(shipped, "checkpoints")) if d.isdigit())
  assert f"trained {step} steps of batch 128 on fashion_mnist" in text
  assert not (run_dir / "checkpoints").exists()  # nothing trained
  results, verdicts = _check_evaluation_and_verdicts(
      nb, text, run_dir, os.path.join(shipped, "threshold.json"))
  metrics = results["ood"]["mnist"]["metrics"]
  assert metrics["llr_k1"]["auroc"] > 0.9 and metrics["elbo"]["auroc"] < 0.5  # 200 vs 200
  assert f"the ELBO's AUROC {metrics['elbo']['auroc']:.3f} is below 0.5" in text
  assert f"LLR^{{>1}}'s AUROC {metrics['llr_k1']['auroc']:.3f}: it separates" in text
  assert sum(l.endswith("OUT-OF-DISTRIBUTION") for l in verdicts[4:]) >= 2, verdicts  # MNIST


def test_notebook_trains_tiny_and_runs_end_to_end(tmp_path, monkeypatch):
  t0 = time.time()
  nb, text, run_dir = _execute(tmp_path, monkeypatch, HVAE_NOTEBOOK_TINY="1")
  assert "Not on Colab" in text
  assert "devices: [" in text and "accelerator: CPU" in text
  # HVAE_NOTEBOOK_TINY=1 trains the tiny config even though a pretrained model is shipped.
  assert "Model: config tiny, trained for 30 steps" in text
  assert (run_dir / "checkpoints").is_dir() and (run_dir / "metrics.jsonl").exists()
  assert "step 30: test bits/dim" in text and "trained 30 steps of batch 32" in text
  results, _ = _check_evaluation_and_verdicts(nb, text, run_dir,
                                              run_dir / "eval" / "threshold.json")
  assert results["model"] == str(run_dir)
  assert time.time() - t0 < 1800
