"""Real colour photographs, cut into CIFAR-shaped patches, that need no download.

The photographs ship inside two installed Python packages (nothing is fetched):

* scikit-image (`skimage.data`, files inside the wheel): astronaut (NASA, public domain),
  chelsea (CC0, Stefan van der Walt), coffee (CC0, Rachel Michetti), rocket (SpaceX, public
  domain);
* scikit-learn (`sklearn.datasets.load_sample_images`): china and flower (CC BY 2.0, Flickr
  users danielbuechele and vultilion).

Split by spatial region: the right `TEST_FRACTION` of every photograph's columns is the test
region, the rest the training region. Each region is cut off *before* any downscaling, so no
pixel of a test patch depends on a training pixel (not even through the resampling filter)
and test patches never overlap training patches. Each region is then resized by every factor
in `SCALES` (Lanczos, for more varied content per patch) and cut into `[size, size]` patches at
a fixed stride of half a patch. The patches of a split are shuffled once with a fixed seed, so
every prefix (e.g. `train.eval_examples`) mixes all photographs. Everything is deterministic.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

# (package, loader name): the colour photographs used, in this order.
PHOTOS = (("skimage", "astronaut"), ("skimage", "chelsea"), ("skimage", "coffee"),
          ("skimage", "rocket"), ("sklearn", "china"), ("sklearn", "flower"))
SPLITS = ("train", "test")
TEST_FRACTION = 0.25  # of each photograph's width, on its right
SCALES = (1.0, 0.75, 0.5, 0.25)
SHUFFLE_SEED = 0


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
  """The photographs of `PHOTOS`, each uint8 `[height, width, 3]` (read from disk once)."""
  # Imported here: `hvae_jax.data` imports this module, and only this source needs
  # scikit-image (an install without it loses only this source) or sklearn.datasets (slow).
  try:
    from skimage import data as skimage_data  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ValueError(f"source='photos' needs scikit-image ({e}); pip install "
                     "scikit-image.") from None
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  sklearn_images = dict(zip(("china", "flower"), load_sample_images().images))
  out = []
  for package, name in PHOTOS:
    image = getattr(skimage_data, name)() if package == "skimage" else sklearn_images[name]
    out.append(np.ascontiguousarray(image, np.uint8))
  return tuple(out)


def split_regions(photo: np.ndarray) -> dict[str, np.ndarray]:
  """`{'train': left part, 'test': right part}` of one photograph `[height, width, 3]`:
  disjoint column ranges that together cover it."""
  border = photo.shape[1] - int(round(photo.shape[1] * TEST_FRACTION))
  return {"train": photo[:, :border], "test": photo[:, border:]}


def cut_patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
  """Every `[size, size]` window of `image` `[height, width, channels]` at `stride` in both
  directions, row by row: `[n, size, size, channels]` (n = 0 if the image is too small)."""
  if image.shape[0] < size or image.shape[1] < size:
    return np.zeros((0, size, size, image.shape[2]), image.dtype)
  windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))
  windows = windows[::stride, ::stride]  # [rows, cols, channels, size, size]
  return windows.reshape(-1, *windows.shape[2:]).transpose(0, 2, 3, 1)


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
  """`image` `[height, width, 3]` uint8 resized by `scale` (Lanczos; unchanged for 1)."""
  if scale == 1.0:
    return image
  height, width = (max(1, int(round(d * scale))) for d in image.shape[:2])
  return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def patches(split: str, image_shape: tuple[int, int, int] = (32, 32, 3)) -> np.ndarray:
  """The patches of `split` ('train' or 'test') as uint8 `[N, height, width, 3]`, a new array.

  Raises:
    ValueError: unknown split, or an image shape that is not square colour `(s, s, 3)`.
  """
  if split not in SPLITS:
    raise ValueError(f"Split {split!r}: the photos source has the splits {list(SPLITS)}.")
  height, width, channels = image_shape
  if channels != 3 or height != width:
    raise ValueError(f"The photos source cuts square colour patches (s, s, 3); the data set "
                     f"wants {tuple(image_shape)}. Use it with a colour data set such as cifar10.")
  return _patches(split, height).copy()


@functools.lru_cache(maxsize=4)
def _patches(split: str, size: int) -> np.ndarray:
  cut = [cut_patches(rescale(split_regions(photo)[split], scale), size, max(1, size // 2))
         for photo in load_photos() for scale in SCALES]
  out = np.concatenate(cut)
  return out[np.random.default_rng(SHUFFLE_SEED).permutation(len(out))]
