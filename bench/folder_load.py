"""Load time of a `folder:` data set: the first read (decode + keep a copy) and the cached one.

  HVAE_DATA_DIR=../shared/data python bench/folder_load.py --images=10000
  HVAE_DATA_DIR=../shared/data python bench/folder_load.py --images=10000 --colour_jpeg

Writes `--images` FashionMNIST test images as PNG files (or, with --colour_jpeg, as colour
JPEGs of 48 to 128 pixels, so that every image is converted and resized) into a temporary
folder, then reads it twice with `data.load_images("folder:...", "all")` into a fresh cache
folder. Files are in the page cache (just written), as on a second look at one's own data.
A measurement, not a test.
"""
import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from hvae_jax import data


def write_images(root: str, n: int, colour_jpeg: bool) -> None:
  x = data.load_images("fashion_mnist", "test")
  rng = np.random.default_rng(0)
  for i in range(n):
    img = Image.fromarray(x[i % len(x), ..., 0])
    if colour_jpeg:
      side = int(rng.integers(48, 129))
      img.convert("RGB").resize((side, side)).save(os.path.join(root, f"{i:05d}.jpg"),
                                                     quality=90)
    else:
      img.save(os.path.join(root, f"{i:05d}.png"))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--images", type=int, default=10000)
  ap.add_argument("--colour_jpeg", action="store_true")
  a = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root, cache = os.path.join(tmp, "images"), os.path.join(tmp, "cache")
    os.makedirs(root)
    write_images(root, a.images, a.colour_jpeg)
    os.environ["HVAE_CACHE_DIR"] = cache
    times = []
    for _ in range(2):
      t0 = time.perf_counter()
      got = data.load_images(f"folder:{root}", "all", image_shape=(28, 28, 1))
      times.append(time.perf_counter() - t0)
    assert got.shape == (a.images, 28, 28, 1), got.shape
  kind = "colour JPEGs 48-128 px" if a.colour_jpeg else "28x28 PNGs"
  print(f"images={a.images} ({kind}) first_s={times[0]:.2f} cached_s={times[1]:.2f}")


if __name__ == "__main__":
  main()
