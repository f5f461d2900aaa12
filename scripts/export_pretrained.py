"""Ship a trained model: its parameters (no optimizer state), config, threshold and checksums.

  python scripts/export_pretrained.py --workdir=RUN --out=pretrained/NAME [--threshold=RUN/eval/threshold.json]

Writes OUT/checkpoints/<step> (parameters and step only, with the checkpoint's own SHA256SUMS
manifest), OUT/config.json, OUT/threshold.json and OUT/SHA256SUMS over every file, so that
`hvae_jax.load_model(OUT)` and `evaluate.py --checkpoint=OUT` load it and tests can verify it.
An existing OUT is replaced only after the new copy is complete.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hvae_jax import checkpoints  # pylint: disable=wrong-import-position


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="training workdir (its latest checkpoint)")
  p.add_argument("--out", required=True, help="folder to write, e.g. pretrained/fmnist_hvae")
  p.add_argument("--threshold", help="threshold.json to ship (default: <workdir>/eval/)")
  a = p.parse_args()
  threshold = a.threshold or os.path.join(a.workdir, "eval", "threshold.json")
  if not os.path.isfile(threshold):
    raise SystemExit(f"error: no threshold file {threshold}; run evaluate.py on the workdir "
                     "first or pass --threshold.")
  try:
    state, meta = checkpoints.load_checkpoint_dir(a.workdir)
  except checkpoints.CheckpointError as e:
    raise SystemExit(f"error: {e}") from None
  step = int(state["step"])
  tmp = a.out.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  ckpt = checkpoints.Checkpointer(os.path.join(tmp, "checkpoints"), max_to_keep=1)
  ckpt.save(step, {"step": state["step"], "params": state["params"]}, meta, force=True)
  ckpt.wait()
  ckpt.close()
  with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=1)
  shutil.copy(threshold, os.path.join(tmp, "threshold.json"))
  sums = []
  for d, _, files in sorted(os.walk(tmp)):
    for name in sorted(files):
      path = os.path.join(d, name)
      with open(path, "rb") as fh:
        sums.append(f"{hashlib.sha256(fh.read()).hexdigest()}  ./{os.path.relpath(path, tmp)}")
  with open(os.path.join(tmp, "SHA256SUMS"), "w", encoding="utf-8") as f:
    f.write("\n".join(sums) + "\n")
  shutil.rmtree(a.out, ignore_errors=True)
  os.replace(tmp, a.out)
  print(f"Wrote {a.out}: step {step}, {len(sums)} files")


if __name__ == "__main__":
  main()
