"""python -m hvae_jax.score: image files found, converted to the model's input, scored, written."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from hvae_jax import api, evaluation, score
from hvae_jax.data import image_files
from tests.helpers import DATA_DIR, REPO, fmnist_slice, mnist_slice

PRETRAINED = os.path.join(REPO, "pretrained", "fmnist_hvae_small")
needs_data = pytest.mark.skipif(not os.path.exists(os.path.join(DATA_DIR, "fashion_mnist.npz")),
                                reason="offline data not found (set HVAE_DATA_DIR)")


def _grey(seed=0, size=(28, 28)):
  return np.random.default_rng(seed).integers(0, 256, size[::-1], dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A user's folder: 4 images of 3 kinds (one in a subfolder, one JPEG) and a text file.

  Returns the folder and, per file, the uint8 [28, 28, 1] the model must be given.
  """
  d = tmp_path_factory.mktemp("images")
  (d / "sub").mkdir()
  f, m = fmnist_slice(3, seed=5), mnist_slice(1, seed=5)
  Image.fromarray(f[0, ..., 0]).save(d / "shirt.png")
  Image.fromarray(f[1, ..., 0]).convert("RGB").save(d / "colour.PNG")
  big = Image.fromarray(f[2, ..., 0]).resize((56, 42), Image.Resampling.NEAREST)
  big.save(d / "sub" / "big.png")
  Image.fromarray(m[0, ..., 0]).save(d / "sub" / "digit.jpg", quality=95)
  (d / "notes.txt").write_text("not an image")
  padded = ImageOps.pad(big, (28, 28), Image.Resampling.LANCZOS, color=0)
  expected = {"shirt.png": f[0], "colour.PNG": f[1], "sub/big.png": np.asarray(padded)[..., None],
              "sub/digit.jpg": np.asarray(Image.open(d / "sub" / "digit.jpg"))[..., None]}
  return d, expected


def _rows(path):
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def test_find_images_walks_folders_and_globs(tmp_path):
  for name in ("a.png", "B.JPEG", "sub/c.jpg", "sub/deep/d.Png", ".hidden.png", ".git/e.png",
               "notes.txt"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  files, passed_over = image_files.find_images([str(tmp_path), str(tmp_path / "sub" / "*.jpg")])
  rel = [os.path.relpath(f, tmp_path) for f in files]
  assert rel == ["B.JPEG", "a.png", "sub/c.jpg", "sub/deep/d.Png"] and passed_over == 1
  # A file named explicitly is taken whatever its extension; decoding judges it later.
  notes = str(tmp_path / "notes.txt")
  assert image_files.find_images([notes]) == ([notes], 0)
  deep = image_files.find_images([str(tmp_path / "**" / "*.Png")])[0]
  assert deep == [str(tmp_path / "sub" / "deep" / "d.Png")]
  with pytest.raises(image_files.ImageFileError, match="no file or folder matches"):
    image_files.find_images([str(tmp_path / "*.gif")])
  with pytest.raises(image_files.ImageFileError, match="missing.png: no such file"):
    image_files.find_images([str(tmp_path / "missing.png")])


def test_load_image_converts_modes_sizes_and_transparency(tmp_path):
  x = _grey()
  Image.fromarray(x).convert("RGB").save(tmp_path / "rgb.png")
  Image.fromarray(x.astype(np.uint16) * 257).save(tmp_path / "16bit.png")
  Image.fromarray(x).convert("P").save(tmp_path / "palette.png")
  rgba = np.zeros((28, 28, 4), np.uint8)
  rgba[..., :3], rgba[..., 3] = 200, 255
  rgba[:, :14, 3] = 0  # left half transparent
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  c = image_files.load_image(str(tmp_path / "rgb.png"), (28, 28, 1))
  np.testing.assert_array_equal(c.pixels[..., 0], x)  # R = G = B: luma is exact
  assert c.conversions == (("mode", "RGB", "greyscale"),)
  c16 = image_files.load_image(str(tmp_path / "16bit.png"), (28, 28, 1))
  np.testing.assert_array_equal(c16.pixels[..., 0], x)  # scaled to 8 bits, not clipped at 255
  assert c16.conversions == (("mode", "16-bit greyscale", "greyscale"),)
  cp = image_files.load_image(str(tmp_path / "palette.png"), (28, 28, 1))
  assert cp.pixels.shape == (28, 28, 1) and cp.conversions == (("mode", "palette", "greyscale"),)
  ca = image_files.load_image(str(tmp_path / "rgba.png"), (28, 28, 1))
  assert np.all(ca.pixels[:, :14] == 0) and np.all(ca.pixels[:, 14:] == 200)
  assert ("alpha", "transparent", "black") in ca.conversions
  # A colour model: greyscale becomes RGB, 28x28 becomes 32x32.
  Image.fromarray(x).save(tmp_path / "grey.png")
  cc = image_files.load_image(str(tmp_path / "grey.png"), (32, 32, 3))
  assert cc.pixels.shape == (32, 32, 3) and np.all(cc.pixels[..., 0] == cc.pixels[..., 2])
  assert cc.conversions == (("mode", "greyscale", "RGB"), ("size", "28x28", "32x32"))


def test_resize_modes_invert_and_border(tmp_path):
  Image.new("L", (56, 28), 255).save(tmp_path / "wide.png")  # white, twice as wide as high
  pad = image_files.load_image(str(tmp_path / "wide.png"), (28, 28, 1), "pad")
  assert pad.conversions == (("size", "56x28", "28x28"),) and pad.border_mean == 255
  assert np.all(pad.pixels[:7] == 0) and np.all(pad.pixels[8:20] == 255)  # black bands above, below
  for mode in ("crop", "stretch"):
    filled = image_files.load_image(str(tmp_path / "wide.png"), (28, 28, 1), mode)
    assert np.all(filled.pixels == 255)
  inv = image_files.load_image(str(tmp_path / "wide.png"), (28, 28, 1), "crop", invert=True)
  assert np.all(inv.pixels == 0) and inv.border_mean == 0
  assert inv.conversions[0] == ("invert", "x", "255 - x")
  # A phone photo stored on its side: turned upright first (28x14 on disk, 14x28 upright).
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.new("L", (28, 14), 255).save(tmp_path / "side.jpg", exif=exif)
  side = image_files.load_image(str(tmp_path / "side.jpg"), (28, 28, 1))
  assert side.conversions == (("exif", "6", "1"), ("size", "14x28", "28x28"))


def test_undecodable_files_name_the_file(tmp_path):
  Image.fromarray(_grey()).save(tmp_path / "ok.png")
  (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
  (tmp_path / "notes.png").write_text("not an image")
  for name in ("cut.png", "notes.png"):
    with pytest.raises(image_files.ImageFileError, match=f"{name}: cannot be decoded"):
      image_files.load_image(str(tmp_path / name), (28, 28, 1))


def test_conversion_notes_count_each_kind_once():
  rgb, pal = ("mode", "RGB", "greyscale"), ("mode", "palette", "greyscale")
  size = ("size", "64x64", "28x28")
  notes = image_files.conversion_notes([(rgb, size), (rgb,), (rgb, size), ()])
  assert notes == ["converted 3 images from RGB to greyscale",
                   "resized 2 images from 64x64 to 28x28 (Lanczos filter, aspect ratio kept, "
                   "padded with black)"]
  assert image_files.conversion_notes([(rgb,), (pal,), (rgb,)]) == [
      "converted 3 images from RGB (2), palette (1) to greyscale"]


def test_animated_image_is_read_at_its_first_frame_with_a_note(tmp_path):
  frames = [Image.fromarray(_grey(seed)) for seed in range(3)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
  c = image_files.load_image(str(tmp_path / "anim.gif"), (28, 28, 1))
  first = np.asarray(Image.open(tmp_path / "anim.gif").convert("L"))  # frame 0 as Pillow opens it
  np.testing.assert_array_equal(c.pixels[..., 0], first)
  assert c.conversions[0] == ("frames", "GIF, 3 frames", "first frame")
  assert image_files.conversion_notes([c.conversions])[0] == (
      "scored only the first frame of 1 animated or multi-page image (GIF, 3 frames)")


@needs_data
def test_huge_and_animated_images_get_one_note_each_not_raw_warnings(tmp_path):
  """A 12000x12000 PNG (over Pillow's 89.5 M pixel warning limit, under its error limit) and
  an animated GIF through the command line: one note each, no DecompressionBombWarning."""
  Image.new("L", (12000, 12000), 0).save(tmp_path / "huge.png")
  frames = [Image.fromarray(_grey(seed)) for seed in range(2)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
  r = subprocess.run([sys.executable, "-m", "hvae_jax.score", f"--checkpoint={PRETRAINED}",
                      "huge.png", "anim.gif", f"--output={tmp_path / 'out'}"], cwd=tmp_path,
                     capture_output=True, text=True, check=False,
                     env=dict(os.environ, PYTHONPATH=REPO))
  assert r.returncode == 0, r.stderr
  assert "DecompressionBomb" not in r.stderr and "Image.py" not in r.stderr, r.stderr
  notes = [l for l in r.stderr.splitlines() if l.startswith("note: ")]
  assert sum("very large image (12000x12000 pixels;" in l for l in notes) == 1, notes
  assert sum("first frame of 1 animated or multi-page image (GIF, 2 frames)" in l
             for l in notes) == 1, notes


def test_default_output_is_under_workdirs_named_after_the_run(tmp_path):
  out = lambda p: evaluation.default_output_dir(p, "score")
  assert out(PRETRAINED) == os.path.join("workdirs", "fmnist_hvae_small", "score")
  assert out("runs/fmnist/checkpoints/1872") == os.path.join("workdirs", "fmnist", "score")
  assert out("runs/fmnist/checkpoints/") == os.path.join("workdirs", "fmnist", "score")
  (tmp_path / "metrics.jsonl").write_text("")  # a training workdir: results go inside it
  assert out(str(tmp_path / "checkpoints" / "20")) == str(tmp_path / "score")


@needs_data
def test_scores_a_folder_and_a_glob_like_the_api(folder, tmp_path, capsys):
  d, expected = folder
  before = sorted(os.walk(PRETRAINED))
  out = tmp_path / "out"
  # The glob repeats a file the folder has: it is scored once.
  score.main([f"--checkpoint={PRETRAINED}", str(d), str(d / "sub" / "*.jpg"), f"--output={out}",
              "--batch_size=2"])
  stdout, stderr = capsys.readouterr()
  assert sorted(os.walk(PRETRAINED)) == before  # nothing written into the shipped model
  rows = _rows(out / "scores.csv")
  files = [os.path.relpath(r["file"], d) for r in rows]
  assert sorted(files) == sorted(expected)
  # The same numbers as TrainedModel.verdict on the converted images, in the same batches.
  m = api.load_model(PRETRAINED)
  s, flags = m.verdict(np.stack([expected[f] for f in files]), batch_size=2)
  drivers = s.pop("driven_by")
  for name, v in s.items():
    np.testing.assert_allclose([float(r[name]) for r in rows], v, rtol=1e-6, err_msg=name)
  assert [r["verdict"] for r in rows] == ["OOD" if f else "in" for f in flags]
  assert [r["driven_by"] for r in rows] == list(drivers)
  rep = json.loads((out / "scores.json").read_text())
  assert rep["model"] == PRETRAINED
  assert rep["threshold"] == m.threshold.brief()
  assert [i["file"] for i in rep["images"]] == [r["file"] for r in rows]
  np.testing.assert_allclose([i["scores"]["llr_k1"] for i in rep["images"]], s["llr_k1"], rtol=1e-6)
  by_file = {os.path.relpath(i["file"], d): i["conversions"] for i in rep["images"]}
  assert by_file["colour.PNG"] == ["mode: RGB -> greyscale"] and by_file["shirt.png"] == []
  # One note per kind of conversion, the passed-over text file, a progress bar (2 batches).
  assert "note: converted 1 image from RGB to greyscale" in stderr
  assert "note: resized 1 image from 56x42 to 28x28" in stderr
  assert "passed over 1 file" in stderr and "score:" in stderr
  # The table: one row per file with its verdict, and the count.
  for r in rows:
    line = next(l for l in stdout.splitlines() if os.path.basename(r["file"]) in l)
    assert line.split()[-2:] == [r["verdict"], f"({r['driven_by']})"]
  th = m.threshold
  assert f"{sum(flags)} of 4 images are OOD: detector {th.rule} > {th.value:.3f}" in stdout


@needs_data
def test_without_a_threshold_scores_only_into_workdirs(folder, tmp_path, monkeypatch, capsys):
  d, expected = folder
  shutil.copytree(PRETRAINED, tmp_path / "my_model",
                  ignore=shutil.ignore_patterns("threshold.json"))
  monkeypatch.chdir(tmp_path)
  rep = score.main(["--checkpoint=my_model", "--skip_bad", str(d / "notes.txt"),
                    str(d / "shirt.png")])
  stdout, stderr = capsys.readouterr()
  rows = _rows(tmp_path / "workdirs" / "my_model" / "score" / "scores.csv")
  assert [r["verdict"] for r in rows] == [""] and rep["threshold"] is None
  assert {"llr_k1", "llr_k2"} <= set(rows[0])  # every k when no threshold picks one
  assert "no threshold" in stdout and "python evaluate.py --checkpoint=my_model" in stderr
  assert "skipped 1 file that could not be decoded (--skip_bad): " in stderr
  assert rep["skipped"][0]["file"].endswith("notes.txt")
  assert "score:" not in stderr  # one image: no progress bar
  s = api.load_model("my_model").score(expected["shirt.png"][None])
  np.testing.assert_allclose(float(rows[0]["elbo"]), s["elbo"][0], rtol=1e-6)


@needs_data
def test_csv_json_and_the_folder_spelling(folder, tmp_path, capsys):
  """`folder:PATH` as train.py and evaluate.py spell it; --csv writes evaluate.py's per-image
  CSV for the files scored; --json prints the report for programs instead of the table."""
  d, expected = folder
  out = tmp_path / "flagged.csv"
  rep = score.main([f"--checkpoint={PRETRAINED}", f"folder:{d}", f"--output={tmp_path / 'out'}",
                    f"--csv={out}", "--json"])
  stdout, stderr = capsys.readouterr()
  assert json.loads(stdout) == json.loads(json.dumps(rep)) and "Wrote" in stderr
  assert sorted(os.path.relpath(i["file"], d) for i in rep["images"]) == sorted(expected)
  rows = _rows(out)
  assert [r["image"] for r in rows] == [i["file"] for i in rep["images"]]
  assert list(rows[0])[0] == "image"
  assert list(rows[0])[-3:] == ["detector_score", "verdict", "driven_by"]
  rule = rep["threshold"]["detector"]
  for r, i in zip(rows, rep["images"]):
    assert float(r["llr_k1"]) == pytest.approx(i["scores"]["llr_k1"], rel=1e-6)
    assert float(r["detector_score"]) == pytest.approx(i["scores"][rule], rel=1e-6)
    assert r["verdict"] == str(i["verdict"] == "OOD") and r["driven_by"] == i["driven_by"]


@needs_data
@pytest.mark.parametrize("args, message", [
    (["notes.txt"], "notes.txt: cannot be decoded as an image"),
    (["empty"], "no .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp images in"),
    (["*.gif"], "*.gif: no file or folder matches"),
    (["--iw_samples=0", "shirt.png"], "argument --iw_samples: must be an integer >= 1, got '0'"),
    (["--k=9", "shirt.png"], "k=[9] is not allowed: this model has 3 latent layers"),
    (["--checkpoint=nowhere", "shirt.png"], "--checkpoint=nowhere: no such folder"),
    (["--csv=nowhere/x.csv", "shirt.png"], "--csv=nowhere/x.csv: cannot write a file there"),
    (["--csv=sub", "shirt.png"], "--csv=sub: cannot write a file there"),
])
def test_bad_input_is_one_clear_error(folder, monkeypatch, args, message):
  d, _ = folder
  (d / "empty").mkdir(exist_ok=True)
  monkeypatch.chdir(d)
  with pytest.raises(SystemExit) as e:
    score.main([f"--checkpoint={PRETRAINED}", *args])
  assert str(e.value).startswith("error: ") and message in str(e.value)


def test_command_line_error_is_one_line_and_verbose_shows_the_traceback(tmp_path):
  cmd = [sys.executable, "-m", "hvae_jax.score", f"--checkpoint={PRETRAINED}"]
  r = subprocess.run([*cmd, "--batch_size=-1", "x.png"], cwd=tmp_path, capture_output=True,
                     text=True, check=False, env=dict(os.environ, PYTHONPATH=REPO))
  assert r.returncode != 0 and r.stdout == ""
  assert r.stderr.strip() == ("error: argument --batch_size: must be an integer >= 1, got '-1'. "
                              "See --help.")
  with pytest.raises(image_files.ImageFileError):
    score.main([f"--checkpoint={PRETRAINED}", "--verbose", str(tmp_path / "missing.png")])
