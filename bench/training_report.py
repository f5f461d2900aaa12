"""How a training run is going, from its workdir's metrics.jsonl: bits/dim, step time, NaN and
KL collapse.

  python bench/training_report.py ~/runs/photos_cifar_hvae [--rows=12] [--plot=curve.png]

Prints one markdown row per chosen logged step: the KL weight beta, the free-bits budget,
train bits/dim (the plain one-sample ELBO of that step's batch: no free bits, beta = 1), the
latest test bits/dim at or before it, seconds a step (batch size / examples_per_s, averaged
over the logging interval) and each latent's KL in nats (kl_1 is the lowest latent). Then the
warnings:

* non-finite: a logged step whose loss or gradient was NaN/inf (`finite` = 0, with
  train.nan_policy='skip'; with 'stop' the run ends with an error naming the step instead);
* KL collapse: a latent whose KL in the last logged step is below `--collapse_nats` once the
  KL weight is 1 (its posterior equals its prior: the latent carries no information).

Not a test; its figures go into bench/RESULTS.md with the command that made them.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hvae_jax import metrics, plots  # pylint: disable=wrong-import-position


def read_metrics(workdir: str) -> tuple[list[dict], list[dict], int]:
  """The train rows, the test rows and the batch size of `workdir`'s run."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise SystemExit(f"error: no metrics.jsonl in {workdir}; pass a training workdir.")
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    batch_size = json.load(f)["config"]["train"]["batch_size"]
  # A resumed run logs again from its checkpoint: keep the last row of each step.
  train = {r["step"]: r for r in rows if r["split"] == "train"}
  test = {r["step"]: r for r in rows if r["split"] == "test"}
  return [train[s] for s in sorted(train)], [test[s] for s in sorted(test)], batch_size


def table(train: list[dict], test: list[dict], batch_size: int, n_rows: int) -> str:
  """Markdown table of about `n_rows` evenly spaced logged steps (the last one included)."""
  picked = sorted({train[i]["step"] for i in
                   [round(j * (len(train) - 1) / max(n_rows - 1, 1)) for j in range(n_rows)]})
  kls = sorted((k for k in train[-1] if k.startswith("kl_")), key=lambda k: int(k[3:]))
  out = []
  for r in (r for r in train if r["step"] in picked):
    earlier = [t["bpd"] for t in test if t["step"] <= r["step"]]
    out.append({"step": r["step"], "beta": r["beta"], "free bits": r["free_bits"],
                "train bpd": r["bpd"], "test bpd": earlier[-1] if earlier else None,
                "s/step": batch_size / r["examples_per_s"],
                **{k: r[k] for k in kls}})
  return metrics.markdown_table(out, list(out[0]), floatfmt=".3g")


def warnings(train: list[dict], collapse_nats: float) -> list[str]:
  out = [f"non-finite loss or gradient at logged step {r['step']}" for r in train
         if not r.get("finite", 1.0) or not math.isfinite(r["loss"])]
  last = train[-1]
  if last["beta"] >= 1.0:
    out += [f"KL collapse: latent {k[3:]} has KL {last[k]:.3g} nats < {collapse_nats} at step "
            f"{last['step']}" for k in last if k.startswith("kl_") and last[k] < collapse_nats]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--rows", type=int, default=12, help="rows of the table")
  parser.add_argument("--collapse_nats", type=float, default=1.0,
                      help="a latent with less KL than this (nats) counts as collapsed")
  parser.add_argument("--plot", default="", help="PNG path for the test bits/dim curve")
  args = parser.parse_args()
  train, test, batch_size = read_metrics(args.workdir)
  if not train:
    raise SystemExit(f"error: {args.workdir}/metrics.jsonl has no train rows yet.")
  print(table(train, test, batch_size, args.rows))
  for line in warnings(train, args.collapse_nats) or ["no non-finite step, no collapsed latent"]:
    print(f"- {line}")
  if args.plot and test:
    plots.plot_curve([t["step"] for t in test], [t["bpd"] for t in test], args.plot,
                     "step", "test bits/dim", os.path.basename(os.path.normpath(args.workdir)))


if __name__ == "__main__":
  main()
