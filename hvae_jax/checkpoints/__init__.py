"""Periodic, atomic, resumable checkpoints with checksums (a thin layer over orbax).

Training saves and resumes with `Checkpointer` (manager.py); evaluation loads with
`load_checkpoint_dir` (loading.py) and `match_params` (matching.py). Every way a checkpoint
can be missing, unfinished, corrupt or built for another model is one `CheckpointError`
(errors.py). The on-disk layout is in layout.py, the checksum manifests in integrity.py.
"""
from hvae_jax.checkpoints.errors import CheckpointError, CorruptCheckpointError
from hvae_jax.checkpoints.integrity import MANIFEST
from hvae_jax.checkpoints.layout import CHECKPOINT_SUBDIR, TMP_SUFFIX
from hvae_jax.checkpoints.loading import load_checkpoint_dir
from hvae_jax.checkpoints.manager import Checkpointer
from hvae_jax.checkpoints.matching import match_params

__all__ = ["CHECKPOINT_SUBDIR", "MANIFEST", "TMP_SUFFIX", "CheckpointError", "Checkpointer",
           "CorruptCheckpointError", "load_checkpoint_dir", "match_params"]
