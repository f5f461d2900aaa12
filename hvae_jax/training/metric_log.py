"""Training metrics to the workdir: metrics.jsonl and TensorBoard event files (process 0 only)."""
from __future__ import annotations

import json
import os

import jax
import numpy as np


class MetricWriter:
  """Metrics to a JSON-lines file and TensorBoard event files in the workdir (host 0 only).

  A run resumed at step `start` replays the steps after it, whose rows a killed run may have
  written already: those rows are dropped from metrics.jsonl (and a line cut off by the kill)
  and TensorBoard is told to hide its events from step `start + 1` on, so each step shows once.
  """

  def __init__(self, workdir: str, start: int = 0):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    # Only the process that writes loads tensorboardX.
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    path = os.path.join(workdir, "metrics.jsonl")
    _keep_rows_up_to(path, start)
    self.jsonl = open(path, "a", encoding="utf-8")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start + 1)

  def write(self, step: int, split: str, scalars: dict[str, float]):
    if not self.active:
      return
    self.jsonl.write(json.dumps({"step": step, "split": split, **scalars}) + "\n")
    self.jsonl.flush()
    for k, v in scalars.items():
      self.tb.add_scalar(f"{split}/{k}", v, step)
    self.tb.flush()

  def close(self):
    if self.active:
      self.jsonl.close()
      self.tb.close()


def _keep_rows_up_to(path: str, step: int) -> None:
  """Rewrites the JSON-lines file `path` (atomically) without its rows of steps after `step`
  and without lines that do not parse; leaves it alone when there is nothing to drop."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):
      pass  # cut off mid-write by a kill
  if kept == lines:
    return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def read_scalars(metrics: dict) -> dict[str, float]:
  """The step's metrics as floats, read from the device at once; a `[L]` vector (e.g. the KL per
  stage) becomes `name_1` .. `name_L`."""
  out = {}
  for k, v in jax.device_get(metrics).items():  # one transfer for all of them
    v = np.asarray(v)
    if v.ndim == 0:
      out[k] = float(v)
    else:
      out.update({f"{k}_{i + 1}": float(x) for i, x in enumerate(v)})
  return out
