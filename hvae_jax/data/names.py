"""Data-set names, one spelling everywhere (train.py, evaluate.py, the API, the score CLI, a
config file):

* a registry name (`registry.DATASETS`, or an alias such as `fmnist`), e.g. `mnist`;
* `folder:PATH`: a folder of image files (`folder.py`);
* `npz:PATH`: an npz archive of uint8 image arrays (`npz.py`);
* `tfds:NAME`: any tensorflow_datasets name, e.g. `tfds:omniglot` (`tfds.py`);

each optionally with a low-level shift, `mnist+noise` or `folder:/data/scans+invert`
(`lowlevel.py`; after a path only a known shift counts, a `+` elsewhere is part of the path).
Reports and file names show a short readable name instead (`short_names`): the registry name,
the folder's or archive's base name, the tfds name.

A data set outside the registry takes its image shape and kind from the model: the kind from
the likelihood (Bernoulli: greyscale, binarized; DMoL: colour), the shape from
`config.train.image_shape`, by default that of the likelihood's usual data (`DEFAULT_SHAPES`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterable, Sequence

from hvae_jax.data import lowlevel
from hvae_jax.data.registry import ALIASES, DatasetSpec, get_spec

PREFIXES = ("folder", "npz", "tfds")
REGISTRY = "registry"
KIND_OF_LIKELIHOOD = {"bernoulli": "binary", "dmol": "discrete"}
DEFAULT_SHAPES = {"binary": (28, 28, 1), "discrete": (32, 32, 3)}  # FashionMNIST's, CIFAR10's


@dataclasses.dataclass(frozen=True)
class DataName:
  """A parsed data-set name: its source ('registry' or a prefix), what it names (a registry
  name, a path, a tfds name) and its low-level shift ('' for none)."""
  source: str
  target: str
  shift: str = ""

  def __str__(self) -> str:
    base = self.target if self.source == REGISTRY else f"{self.source}:{self.target}"
    return f"{base}+{self.shift}" if self.shift else base

  @property
  def short(self) -> str:
    """A readable name for reports and file names (not unique: see `short_names`)."""
    if self.source in ("folder", "npz"):
      base = os.path.basename(os.path.abspath(os.path.expanduser(self.target)))
      base = base[:-len(".npz")] if self.source == "npz" and base.endswith(".npz") else base
    else:
      base = self.target
    base = re.sub(r"[^\w.-]+", "_", base).strip("_.") or self.source
    return f"{base}+{self.shift}" if self.shift else base


def parse(name: str) -> DataName:
  """The `DataName` of a spelling above; ValueError (one line) for an unknown or empty name."""
  text = str(name).strip()
  prefix, sep, rest = text.partition(":")
  if not sep or prefix not in PREFIXES:
    base, shift = lowlevel.split_name(text)
    base = ALIASES.get(base, base)
    get_spec(base)  # an unknown name fails here, listing the known ones and the prefixes
    return DataName(REGISTRY, base, shift)
  target, plus, shift = rest.rpartition("+")
  if not plus or shift not in lowlevel.SHIFTS:
    target, shift = rest, ""
  if not target.strip():
    what = "a tfds name" if prefix == "tfds" else "a path"
    raise ValueError(f"{text!r} names no data set: write {prefix}:<{what}>.")
  return DataName(prefix, target, shift)


def short_names(names: Iterable[str], taken: Sequence[str] = ()) -> dict[str, str]:
  """`{short name: canonical name}` for `names` in order, each short name unique and none in
  `taken` (a clash gets `_2`, `_3`, ...)."""
  out: dict[str, str] = {}
  for name in names:
    parsed = parse(name)
    short, n = parsed.short, 1
    while short in out or short in taken:
      n += 1
      short = f"{parsed.short}_{n}"
    out[short] = str(parsed)
  return out


def spec_for(name: str, likelihood: str = "", image_shape: Sequence[int] = ()) -> DatasetSpec:
  """The `DatasetSpec` of any data-set name: the registry's entry, or for a `folder:`,
  `npz:` or `tfds:` set the kind of `likelihood` and `image_shape` (default
  `DEFAULT_SHAPES` of that kind).

  Raises:
    ValueError: an unknown name, an unknown likelihood, or an image shape that is not
      (H, W, C) with C = 1 or 3 (or, for a registry name, not its own).
  """
  parsed = parse(name)
  shape = tuple(image_shape)
  if parsed.source == REGISTRY:
    spec = get_spec(parsed.target)
    if shape and shape != spec.image_shape:
      raise ValueError(f"config.train.image_shape = {shape} is for folder:, npz: and tfds: data "
                       f"sets; {parsed.target} images are {spec.image_shape}: leave it ().")
    return spec
  if likelihood not in KIND_OF_LIKELIHOOD:
    raise ValueError(f"likelihood {likelihood!r} is not one of {sorted(KIND_OF_LIKELIHOOD)}.")
  kind = KIND_OF_LIKELIHOOD[likelihood]
  shape = shape or DEFAULT_SHAPES[kind]
  if (len(shape) != 3 or any(not isinstance(v, int) or v < 1 for v in shape)
      or shape[-1] not in (1, 3)):
    raise ValueError(f"config.train.image_shape = {shape!r} is not (height, width, channels) "
                     f"with 1 (greyscale) or 3 (colour) channels.")
  return DatasetSpec(shape, kind, parsed.target if parsed.source == "tfds" else "", None, ())


def config_spec(config: Any) -> DatasetSpec:
  """`spec_for` the data set of an experiment config (its data.name, model.likelihood and
  train.image_shape)."""
  return spec_for(config.data.name, config.model.likelihood,
                  tuple(config.train.image_shape))
