"""The 'mock' source: tfds' mock data, `MOCK_EXAMPLES` random images of a data set's declared
shape per split, nothing downloaded (`tfds.testing.mock_data`).

For smoke runs of the whole pipeline (train -> evaluate) where the real data is not at hand,
e.g. CIFAR10 -> SVHN offline. Its scores mean nothing: the mock draws the same images for
every data set and split of one image shape, so a mock CIFAR10 -> SVHN run gives AUROC 0.5
by construction.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

MOCK_EXAMPLES = 512


def mock_data(tfds: Any, on: bool) -> ContextManager:
  """`tfds.testing.mock_data` (of the tensorflow_datasets module `tfds`) when `on`, else a
  context that changes nothing."""
  return tfds.testing.mock_data(num_examples=MOCK_EXAMPLES) if on else contextlib.nullcontext()
