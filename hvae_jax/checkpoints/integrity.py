"""Checksum manifests: one `SHA256SUMS` per step, written after the save, checked before a restore.

Orbax stores no checksum of array data, so a flipped byte would load silently. Each step's
manifest lists the sha256 of every other file in it, in `sha256sum` format
(`cd <step> && sha256sum -c SHA256SUMS` checks it by hand). A mismatch is a
`CorruptCheckpointError` naming the file and the step; a step saved before manifests
existed loads unverified, with a one-line note.
"""
from __future__ import annotations

import hashlib
import logging
import re

from etils import epath

from hvae_jax.checkpoints.errors import corrupt_step

log = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS"
_MANIFEST_TMP = MANIFEST + ".tmp"


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _files(directory: epath.Path, prefix: str = "") -> list[tuple[str, epath.Path]]:
  """Every file below `directory`, as ('/'-separated relative name, path); epath has no rglob
  for cloud paths."""
  found = []
  for path in directory.iterdir():
    if path.is_dir():
      found += _files(path, f"{prefix}{path.name}/")
    else:
      found.append((prefix + path.name, path))
  return found


def _checksums(step_dir: epath.Path) -> dict[str, str]:
  """sha256 of every file in `step_dir` but the manifest itself, by relative name."""
  return {name: _sha256(path) for name, path in _files(step_dir)
          if name not in (MANIFEST, _MANIFEST_TMP)}


def write_manifest(step_dir: epath.Path) -> None:
  """Writes `step_dir/SHA256SUMS` for the files of a committed step."""
  text = "".join(f"{digest}  {name}\n" for name, digest in sorted(_checksums(step_dir).items()))
  tmp = step_dir / _MANIFEST_TMP
  tmp.write_text(text)
  tmp.rename(step_dir / MANIFEST)  # atomic: a reader sees the whole manifest or none


def _read_manifest(path: epath.Path) -> dict[str, str]:
  """{file: sha256} from a `sha256sum`-format file; ValueError if a line is malformed."""
  sums = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
    if not match:
      raise ValueError(f"line {number} is not '<sha256>  <file>'")
    sums[match.group(2)] = match.group(1)
  return sums


def verify_manifest(step_dir: epath.Path) -> bool:
  """Checks the files of `step_dir` (`<checkpoint dir>/<step>`) against its manifest.

  Returns False, with a one-line note, for a step without a manifest.

  Raises:
    CorruptCheckpointError: a file differs from its checksum or is missing (names the
      file and the step), or the manifest itself is unreadable.
  """
  step = int(step_dir.name)
  manifest = step_dir / MANIFEST
  if not manifest.exists():
    log.warning("note: checkpoint %s has no %s (saved without checksums); loading it "
                "unverified", step_dir, MANIFEST)
    return False
  try:
    expected = _read_manifest(manifest)
  except (OSError, UnicodeDecodeError, ValueError) as err:
    raise corrupt_step(step_dir, f"its {MANIFEST} is unreadable", err) from None
  for name, digest in sorted(expected.items()):
    path = step_dir / name
    if not path.is_file():
      raise corrupt_step(step_dir, f"file {name} listed in its {MANIFEST} is missing")
    if _sha256(path) != digest:
      raise corrupt_step(step_dir, f"file {name} does not match the sha256 recorded in its "
                                   f"{MANIFEST} when step {step} was saved")
  return True
