"""Tests of hvae_jax.plots: files are written, are valid PNGs, grid shapes are right."""
import numpy as np
import pytest
from PIL import Image

from hvae_jax import plots


def _scores(seed=0):
  rng = np.random.default_rng(seed)
  s_in = {"elbo": rng.normal(size=200), "llr_k1": rng.normal(size=200)}
  s_out = {"elbo": rng.normal(1.0, size=120), "llr_k1": rng.normal(2.0, size=120)}
  return s_in, s_out


def _assert_png(path):
  assert path.exists() and path.stat().st_size > 0
  with Image.open(path) as im:
    assert im.format == "PNG"
    im.verify()


def test_plot_roc(tmp_path):
  s_in, s_out = _scores()
  path = tmp_path / "sub" / "roc.png"  # parent folder is created
  plots.plot_roc(s_in, s_out, str(path), title="in vs out")
  _assert_png(path)


def test_plot_histograms(tmp_path):
  s_in, s_out = _scores()
  s_in["const"], s_out["const"] = np.ones(10), np.ones(5)  # degenerate bins must not fail
  path = tmp_path / "hist.png"
  plots.plot_histograms(s_in, s_out, path, title="hist")
  _assert_png(path)


def test_plot_curve(tmp_path):
  path = tmp_path / "sub" / "curve.png"
  plots.plot_curve(np.arange(5), np.linspace(0.4, 0.3, 5), path, "epoch", "test bits/dim", "t")
  _assert_png(path)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", ["float", "uint8"])
def test_image_grid(tmp_path, channels, dtype):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(10, 8, 6, channels))
  if dtype == "uint8":
    images = (images * 255).astype(np.uint8)
  path = tmp_path / "grids" / f"grid_{channels}_{dtype}.png"
  grid = plots.image_grid(images, path, nrow=5)
  p = 2  # default padding
  assert grid.dtype == np.uint8
  assert grid.shape == (2 * (8 + p) + p, 5 * (6 + p) + p, channels)
  _assert_png(path)
  with Image.open(path) as im:
    assert im.size == (grid.shape[1], grid.shape[0])
    assert im.mode == ("L" if channels == 1 else "RGB")
    saved = np.asarray(im)
  np.testing.assert_array_equal(saved.reshape(grid.shape), grid)
  # The first tile holds the first image.
  expected = images[0] if dtype == "uint8" else np.round(images[0] * 255).astype(np.uint8)
  np.testing.assert_array_equal(grid[p:p + 8, p:p + 6], expected)


def test_image_grid_default_nrow_and_errors(tmp_path):
  grid = plots.image_grid(np.zeros((10, 4, 4, 3)), tmp_path / "g.png", padding=0)
  assert grid.shape == (3 * 4, 4 * 4, 3)  # ceil(sqrt(10)) = 4 per row, 3 rows
  with pytest.raises(ValueError):
    plots.image_grid(np.zeros((2, 4, 4, 2)), tmp_path / "bad.png")
  with pytest.raises(ValueError):
    plots.image_grid(np.zeros((4, 4, 3)), tmp_path / "bad.png")
