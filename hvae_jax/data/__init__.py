"""The data sets: the registry's names and any folder, npz archive or tfds data set, as uint8
`[N, H, W, C]` images (`load_images`, `load_set`). One module per idea:

`registry` (the known names and their specs), `names` (the spellings `folder:PATH`,
`npz:PATH`, `tfds:NAME`, short names, the spec of any name), `loading` (one call for every
source), the sources `npz`, `idx`, `tfds`, `mock`, `folder` (with `folder_cache`) and
`photos`, `download` (verified downloads of the official files), `lowlevel` (generated
low-level OOD sets), `image_files` (decoding image files), `conform` (the one rule that
brings images to a model's shape) and `splits` (the seeded train/test split).
"""
from hvae_jax.data.conform import RESIZE
from hvae_jax.data.idx import IDX_IMAGES, SYSTEM_DATA_DIRS, read_idx
from hvae_jax.data.loading import ImageSet, load_images, load_set
from hvae_jax.data.mock import MOCK_EXAMPLES
from hvae_jax.data.names import DataName, config_spec, parse, short_names, spec_for
from hvae_jax.data.registry import (ALIASES, DATA_DIR_ENV, DATASETS, SOURCES, DatasetSpec,
                                    default_data_dir, get_spec)
from hvae_jax.data.splits import OOD as OOD_SPLIT

__all__ = ["RESIZE", "IDX_IMAGES", "SYSTEM_DATA_DIRS", "read_idx", "ImageSet", "load_images",
           "load_set", "MOCK_EXAMPLES", "DataName", "config_spec", "parse", "short_names",
           "spec_for", "ALIASES", "DATA_DIR_ENV", "DATASETS", "SOURCES", "DatasetSpec",
           "default_data_dir", "get_spec", "OOD_SPLIT"]
