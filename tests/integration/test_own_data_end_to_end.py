"""Your own data end to end, on real image files: train the tiny config on a folder of
FashionMNIST PNGs with train.py, score folders of MNIST PNGs and of photograph patches (and the
same MNIST images as an npz) with evaluate.py, and see which images were flagged; the Python
API trains on an array."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import hvae_jax
from hvae_jax.data import photos
from tests.helpers import DATA_DIR, REPO, fmnist_slice, mnist_slice

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(DATA_DIR, "fashion_mnist.npz")),
                                reason="offline data not found (set HVAE_DATA_DIR)")
N_TRAIN, N_TEST, N_MNIST, N_PHOTOS = 240, 60, 80, 40


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600, check=False, env=dict(os.environ, PYTHONPATH=REPO))


def _rows(path):
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def _save(folder, images):
  """uint8 [N, H, W(, C)] images as PNG files 0000.png, ... in `folder`; returns their paths."""
  os.makedirs(folder, exist_ok=True)
  paths = [os.path.join(folder, f"{i:04d}.png") for i in range(len(images))]
  for path, x in zip(paths, images):
    Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(path)
  return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Real images as PNG files: FashionMNIST in train/ and test/, MNIST digits, photograph
  patches (32x32 colour), and the same MNIST digits as an npz archive."""
  root = tmp_path_factory.mktemp("own")
  fm = str(root / "fashion")
  _save(os.path.join(fm, "train"), fmnist_slice(N_TRAIN, "train"))
  test = _save(os.path.join(fm, "test"), fmnist_slice(N_TEST, "test"))
  digits = mnist_slice(N_MNIST, seed=3)
  mnist = _save(str(root / "digits"), digits)
  np.savez(root / "digits.npz", images=digits)
  _save(str(root / "photos"), photos.patches("test")[:N_PHOTOS])
  return dict(root=root, fm=fm, test=test, mnist=mnist, npz=str(root / "digits.npz"),
              photos=str(root / "photos"))


@pytest.fixture(scope="module")
def trained_on_folder(files):
  workdir = str(files["root"] / "run")
  r = _run("train.py", "--config=configs/tiny.py", f"--config.data.name=folder:{files['fm']}",
           "--config.train.max_steps=8", "--config.train.sample_grid=0",
           "--config.train.eval_every_epochs=100", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"Read folder:{files['fm']}: {N_TRAIN + N_TEST} images" in r.stdout
  return workdir


def test_train_on_a_folder_and_see_which_images_of_other_folders_are_flagged(
    files, trained_on_folder):
  r = _run("evaluate.py", f"--workdir={trained_on_folder}",
           f"--ood=folder:{os.path.dirname(files['mnist'][0])},npz:{files['npz']},"
           f"folder:{files['photos']}")
  assert r.returncode == 0, r.stderr[-3000:]
  out = os.path.join(trained_on_folder, "eval")
  res = json.loads(open(os.path.join(out, "results.json"), encoding="utf-8").read())
  assert res["in_distribution"] == "fashion"
  assert res["data_sets"] == {"fashion": f"folder:{files['fm']}",
                              "digits": f"folder:{os.path.dirname(files['mnist'][0])}",
                              "digits_2": f"npz:{files['npz']}",
                              "photos": f"folder:{files['photos']}"}
  assert set(res["ood"]) == {"digits", "digits_2", "photos"}
  # The photographs are colour and 32x32: converted for the greyscale 28x28 model, each kind
  # of change said once with its count.
  assert f"converted {N_PHOTOS} images from RGB to greyscale" in r.stdout
  assert f"resized {N_PHOTOS} images from 32x32 to 28x28" in r.stdout
  # Same images, same scores: the digits as PNG files and as an npz archive.
  png = _rows(os.path.join(out, "digits_scores.csv"))
  arr = _rows(os.path.join(out, "digits_2_scores.csv"))
  assert [row["image"] for row in png] == files["mnist"]  # every file, named by its path
  assert [row["image"] for row in arr] == [str(i) for i in range(N_MNIST)]  # by index
  stats = [c for c in png[0] if c not in ("image", "verdict", "driven_by")]
  assert {"elbo", "llr_k1", "llr_k2", "detector_score"} <= set(stats)
  for column in stats:
    np.testing.assert_array_equal([float(row[column]) for row in png],
                                  [float(row[column]) for row in arr], err_msg=column)
  assert [row["verdict"] for row in png] == [row["verdict"] for row in arr]
  assert {row["verdict"] for row in png} <= {"True", "False"}
  assert [row["image"] for row in _rows(os.path.join(out, "fashion_test_scores.csv"))] == (
      files["test"])  # the in-distribution test set: the test/ subfolder
  report = open(os.path.join(out, "results.md"), encoding="utf-8").read()
  for name in ("fashion_test", "digits", "digits_2", "photos"):
    for kind in ("most_ood", "least_ood"):
      grid = os.path.join(out, f"{name}_{kind}.png")
      assert Image.open(grid).size[0] > 500, grid
      assert f"[{name}_{kind}.png]({name}_{kind}.png)" in report
    rows = _rows(os.path.join(out, f"{name}_scores.csv"))
    assert res["flagged"][name]["flagged"] == sum(row["verdict"] == "True" for row in rows)
  # python -m hvae_jax.score gives the same files the same scores and verdicts.
  r = _run("-m", "hvae_jax.score", f"--checkpoint={trained_on_folder}",
           f"folder:{os.path.dirname(files['mnist'][0])}", f"--csv={files['root'] / 'cli.csv'}",
           f"--output={files['root'] / 'score'}")
  assert r.returncode == 0, r.stderr[-3000:]
  cli = _rows(files["root"] / "cli.csv")
  assert [row["image"] for row in cli] == files["mnist"]
  for column in ("elbo", "llr_k1", "detector_score"):
    np.testing.assert_allclose([float(row[column]) for row in cli],
                               [float(row[column]) for row in png], rtol=1e-6, err_msg=column)
  assert [row["verdict"] for row in cli] == [row["verdict"] for row in png]


def test_bad_data_set_names_are_one_clear_line(files, trained_on_folder):
  for ood, message in [(f"folder:{files['root'] / 'nowhere'}", "nowhere: no such folder"),
                       (f"npz:{files['root'] / 'nowhere.npz'}", "nowhere.npz: no such file"),
                       ("folder:", "names no data set: write folder:<a path>"),
                       ("tfds:not_a_data_set_xyz", "tensorflow_datasets has no data set")]:
    r = _run("evaluate.py", f"--workdir={trained_on_folder}", f"--ood={ood}",
             f"--output={files['root'] / 'bad'}")
    lines = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
  assert not os.path.exists(files["root"] / "bad" / "results.json")
  r = _run("evaluate.py", f"--workdir={trained_on_folder}", f"--output={files['npz']}")
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "cannot write a folder there (it is a file)" in r.stderr


def test_the_api_trains_on_an_array_and_evaluates_arrays_and_names(tmp_path):
  workdir = tmp_path / "mine"
  model = hvae_jax.train("configs/tiny.py", workdir, images=fmnist_slice(200, "train"),
                         overrides={"train.max_steps": 4, "train.sample_grid": 0,
                                    "train.eval_every_epochs": 100.0})
  assert model.config.data.name == f"npz:{workdir / 'mine.npz'}"
  digits = mnist_slice(30)
  res = hvae_jax.evaluate(model, ood={"digits": digits, "again": f"npz:{workdir / 'mine.npz'}"},
                          data_dir=DATA_DIR, progress=False)
  assert res["in_distribution"] == "mine" and res["data_sets"]["digits"] == "array"
  assert len(_rows(workdir / "eval" / "digits_scores.csv")) == 30
  # The checkpoint names its data: a fresh load evaluates without the array.
  again = hvae_jax.evaluate(str(workdir), ood=["mnist"], data_dir=DATA_DIR, progress=False,
                            max_examples=20)
  assert again["data_sets"] == {"mine": f"npz:{workdir / 'mine.npz'}", "mnist": "mnist"}
