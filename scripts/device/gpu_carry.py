"""What one device call carries in and brings back (scripts/device/gpu_run.py): data and workdirs.

The device README's limits shape this: the working tree that travels (tracked files,
untracked files git does not ignore, carried paths) is at most 64 MiB in all, and at most 8
files of at most 16 MiB each come back from $OUT. Hence

  * data: each array a run needs is stored as its `.npy` bytes, xz-compressed
    (`<set>.<array>.npy.xz`; FashionMNIST's images shrink to 0.48 of raw, against 0.56 for the
    npz's deflate), and rebuilt there into the `<set>.npz` that `hvae_jax.data` reads;
  * a workdir (its latest checkpoint, config.json, metrics.jsonl and, coming back, eval/) as
    one uncompressed tar (orbax already compresses the arrays) split into parts.

Both are checked by the sha256 sums in the manifest `pack_*` returns and `unpack_*` takes.
Standard library and numpy only: the device-side driver runs it before it starts any JAX work.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from typing import Optional, Sequence

import numpy as np

MIB = 2**20
# The paper model's workdir is ~31 MB; parts stay under the 16 MiB a returned file may have.
PART_BYTES = 15 * MIB
WORKDIR_FILES = ("config.json", "metrics.jsonl")
CHECKPOINT_SUBDIR = "checkpoints"  # the training loop's layout: WORKDIR/checkpoints/<step>/


class CarryError(RuntimeError):
  """A carried file is missing or does not match its checksum; the message names it."""


def sha256_bytes(b: bytes) -> str:
  return hashlib.sha256(b).hexdigest()


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(MIB), b""):
      h.update(block)
  return h.hexdigest()


# ------------------------------------------------------------------------------------------
# Data sets
# ------------------------------------------------------------------------------------------
def pack_arrays(npz_path: str, arrays: Sequence[str], dest_dir: str,
                cached: Optional[dict] = None) -> dict:
  """Writes `arrays` of `npz_path` as `<set>.<array>.npy.xz` into `dest_dir`.

  Returns the manifest entry `{source, source_sha256, arrays: {name: {file, npy_sha256}}}`.
  `cached` (this function's earlier entry) is returned as is when the source is unchanged
  and its files are there: compressing the 47 MB of training images takes a minute.
  """
  os.makedirs(dest_dir, exist_ok=True)
  source_sha = sha256_file(npz_path)
  stem = os.path.basename(npz_path)[:-len(".npz")]
  if (cached and cached.get("source_sha256") == source_sha
      and sorted(cached["arrays"]) == sorted(arrays)
      and all(os.path.isfile(os.path.join(dest_dir, e["file"])) for e in cached["arrays"].values())):
    return cached
  entry = {"source": os.path.basename(npz_path), "source_sha256": source_sha, "arrays": {}}
  with np.load(npz_path) as f:
    for name in arrays:
      buf = io.BytesIO()
      np.save(buf, f[name], allow_pickle=False)
      raw = buf.getvalue()
      file = f"{stem}.{name}.npy.xz"
      with open(os.path.join(dest_dir, file), "wb") as out:
        out.write(lzma.compress(raw, preset=6))
      entry["arrays"][name] = {"file": file, "npy_sha256": sha256_bytes(raw)}
  return entry


def unpack_arrays(src_dir: str, entry: dict, dest_dir: str) -> str:
  """Rebuilds `dest_dir/<entry['source']>` (uncompressed npz) from `pack_arrays`' files."""
  arrays = {}
  for name, e in entry["arrays"].items():
    path = os.path.join(src_dir, e["file"])
    if not os.path.isfile(path):
      raise CarryError(f"carried data file {path} is missing; rerun `gpu_run.py prepare`")
    with open(path, "rb") as f:
      raw = lzma.decompress(f.read())
    if sha256_bytes(raw) != e["npy_sha256"]:
      raise CarryError(f"{path} does not match its sha256 in the manifest")
    arrays[name] = np.load(io.BytesIO(raw), allow_pickle=False)
  os.makedirs(dest_dir, exist_ok=True)
  out = os.path.join(dest_dir, entry["source"])
  np.savez(out, **arrays)
  return out


# ------------------------------------------------------------------------------------------
# Workdirs (checkpoint and its history)
# ------------------------------------------------------------------------------------------
def latest_step(workdir: str) -> Optional[int]:
  """The newest finished checkpoint step in `workdir/checkpoints/` (None if none).

  Orbax writes `<step>.orbax-checkpoint-tmp` and renames it to `<step>` once complete, so a
  bare number names a finished step (hvae_jax.checkpoints, without importing orbax here).
  """
  d = os.path.join(workdir, CHECKPOINT_SUBDIR)
  steps = [int(n) for n in (os.listdir(d) if os.path.isdir(d) else ())
           if re.fullmatch(r"\d+", n) and os.path.isdir(os.path.join(d, n))]
  return max(steps) if steps else None


def pack_workdir(workdir: str, dest_dir: str, prefix: str = "workdir",
                 part_bytes: int = PART_BYTES, with_eval: bool = False) -> dict:
  """Tars `workdir`'s latest checkpoint, WORKDIR_FILES (and eval/ if `with_eval`) into parts.

  Writes `dest_dir/<prefix>.tar.part-NN`; returns the manifest
  `{step, tar_bytes, tar_sha256, parts: [{name, bytes, sha256}]}`.
  """
  step = latest_step(workdir)
  if step is None:
    raise CarryError(f"{workdir} has no finished checkpoint under {CHECKPOINT_SUBDIR}/")
  members = [os.path.join(CHECKPOINT_SUBDIR, str(step))]
  members += [n for n in WORKDIR_FILES if os.path.isfile(os.path.join(workdir, n))]
  eval_dir = os.path.join(workdir, "eval")
  if with_eval and os.path.isdir(eval_dir):
    members.append("eval")
  os.makedirs(dest_dir, exist_ok=True)
  for old in os.listdir(dest_dir):  # parts of an earlier pack would be joined in
    if old.startswith(f"{prefix}.tar.part-"):
      os.remove(os.path.join(dest_dir, old))
  with tempfile.TemporaryFile() as tmp:
    with tarfile.open(fileobj=tmp, mode="w") as tar:
      for m in members:
        tar.add(os.path.join(workdir, m), arcname=m)
    size = tmp.tell()
    tmp.seek(0)
    whole, parts = hashlib.sha256(), []
    for i in range(max(1, -(-size // part_bytes))):
      chunk = tmp.read(part_bytes)
      whole.update(chunk)
      name = f"{prefix}.tar.part-{i:02d}"
      with open(os.path.join(dest_dir, name), "wb") as f:
        f.write(chunk)
      parts.append({"name": name, "bytes": len(chunk), "sha256": sha256_bytes(chunk)})
  return {"step": step, "tar_bytes": size, "tar_sha256": whole.hexdigest(), "parts": parts}


def unpack_workdir(src_dir: str, manifest: dict, dest: str) -> int:
  """Checks and joins `pack_workdir`'s parts from `src_dir` and extracts them into `dest`.

  Files already in `dest` with the same names are replaced (metrics.jsonl comes back as a
  superset of what went out); other checkpoint steps there stay. Returns the step.
  """
  with tempfile.TemporaryFile() as tmp:
    whole = hashlib.sha256()
    for p in manifest["parts"]:
      path = os.path.join(src_dir, p["name"])
      if not os.path.isfile(path):
        raise CarryError(f"checkpoint part {path} is missing")
      with open(path, "rb") as f:
        chunk = f.read()
      if len(chunk) != p["bytes"] or sha256_bytes(chunk) != p["sha256"]:
        raise CarryError(f"checkpoint part {path} does not match its size/sha256 in the manifest")
      whole.update(chunk)
      tmp.write(chunk)
    if whole.hexdigest() != manifest["tar_sha256"]:
      raise CarryError(f"the joined parts in {src_dir} do not match the tar's sha256")
    tmp.seek(0)
    os.makedirs(dest, exist_ok=True)
    step_dir = os.path.join(dest, CHECKPOINT_SUBDIR, str(manifest["step"]))
    if os.path.isdir(step_dir):  # a repeated unpack: no stale files from the last one
      shutil.rmtree(step_dir)
    with tarfile.open(fileobj=tmp, mode="r") as tar:
      tar.extractall(dest, filter="data")
  return int(manifest["step"])


# ------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------
def tree_bytes(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def travel_bytes(repo: str, carry: Sequence[str]) -> dict:
  """Bytes of what a device call sends: tracked + untracked-not-ignored files, carried paths."""
  def listed(*args):
    out = subprocess.run(["git", "-C", repo, "ls-files", "-z", *args], check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and os.path.isfile(os.path.join(repo, f))]
  git_files = sum(os.path.getsize(os.path.join(repo, f))
                  for f in listed() + listed("--others", "--exclude-standard"))
  carried = {c: tree_bytes(os.path.join(repo, c)) for c in carry}
  return {"git_files": git_files, "carry": carried, "total": git_files + sum(carried.values())}


def write_json(path: str, obj: dict) -> None:
  """Writes `obj` atomically (a killed run leaves the previous version, never half a file)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)
