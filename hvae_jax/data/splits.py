"""The seeded train/test split of a data set that comes as one pile of images (a folder
without `train/` and `test/` subfolders, an npz archive with one `images` array).

Each image is ranked by the SHA-256 of `SEED` and its key (its path inside the folder, or its
index in the array); the first `TEST_FRACTION` (at least one image) are the test split, the
rest the training split. The rank of an image never depends on the others, so adding images
to a folder moves no other image between the splits (except at the boundary of the count).
'all' is every image, in order; `OOD` is what an OOD set reads.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

TEST_FRACTION = 0.1
SEED = 0
SPLITS = ("train", "test", "all")
# The split an OOD set is read from: its own test split where it has one (a test/ subfolder, a
# test_images array, a tfds test split), else every image.
OOD = "ood"


def split_indices(keys: Sequence[str], split: str, where: str) -> np.ndarray:
  """The ascending indices of `split` ('train', 'test' or 'all') among the images `keys` name.

  Raises:
    ValueError: naming `where`: another split, or fewer than 2 images to split.
  """
  n = len(keys)
  if split == "all":
    return np.arange(n)
  if split not in SPLITS:
    raise ValueError(f"{where}: no split {split!r}; a data set without its own splits has "
                     f"'train', 'test' (a seeded {TEST_FRACTION:.0%} of its images) and 'all'.")
  if n < 2:
    raise ValueError(f"{where}: {n} image{'s' * (n != 1)}, too few for a train/test split "
                     f"(at least 2); use split 'all' to score every image.")
  n_test = max(1, round(n * TEST_FRACTION))
  rank = sorted(range(n), key=lambda i: hashlib.sha256(f"{SEED}:{keys[i]}".encode()).digest())
  test = np.zeros(n, bool)
  test[rank[:n_test]] = True
  return np.flatnonzero(test if split == "test" else ~test)
