"""The quick start's closing lines: what its numbers mean and where the tables and plots are.

  python scripts/quickstart_summary.py --workdir=workdirs/quickstart --tiny=1 --seconds=150

Reads the results.json files that scripts/quickstart.sh's evaluate.py runs wrote: the shipped
paper model's in <workdir>/pretrained_eval and, with --tiny=1, the tiny model's in <workdir>/eval.
"""
import argparse
import json
import os

# The paper's FashionMNIST -> MNIST AUROCs (Havtorn et al. 2021, Table 2), to compare with.
PAPER_AUROC = {"elbo": 0.268, "llr_k1": 0.964}


def _results(folder: str) -> dict:
  path = os.path.join(folder, "results.json")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: cannot read {path} ({e}); run bash scripts/quickstart.sh") from None


def _auroc(results: dict, score: str) -> float:
  return results["ood"]["mnist"]["metrics"][score]["auroc"]


def summary(workdir: str, tiny: bool, seconds: int) -> list[str]:
  """The closing lines, plain words first, then where the files are."""
  paper_dir = os.path.join(workdir, "pretrained_eval")
  paper = _results(paper_dir)
  n_in = paper["settings"]["max_examples"]
  elbo, llr = _auroc(paper, "elbo"), _auroc(paper, "llr_k1")
  lines = [
      "",
      f"Quick start finished in {seconds // 60} min {seconds % 60:02d} s.",
      f"The shipped paper model ({paper['model']}), FashionMNIST test images (in-distribution) "
      f"vs MNIST digits (OOD), {n_in} vs {n_in}, seed {paper['settings']['seed']}:",
      f"  ELBO      AUROC {elbo:.3f} (paper {PAPER_AUROC['elbo']}): "
      + ("below 0.5, so the likelihood ranks the MNIST digits as MORE likely than the "
         "model's own FashionMNIST test images; it cannot flag them."
         if elbo < 0.5 else "the likelihood does not fail here as it does in the paper."),
      f"  LLR^{{>1}}  AUROC {llr:.3f} (paper {PAPER_AUROC['llr_k1']}): "
      + ("close to 1, so the paper's score (ELBO minus the bound with the lowest latent "
         "from the prior) separates the digits from FashionMNIST."
         if llr >= 0.9 else "below 0.9: the paper's effect did not show; please report this."),
  ]
  if tiny:
    tiny_llr = _auroc(_results(os.path.join(workdir, "eval")), "llr_k1")
    lines.append(f"The tiny model trained above (400 steps) checks that training, resuming and "
                 f"evaluation work; its LLR^{{>1}} AUROC {tiny_llr:.3f} depends on the seed and "
                 f"says little about the method.")
  folders = [paper_dir] + ([os.path.join(workdir, "eval")] if tiny else [])
  lines += [
      "Tables (bits/dim as the paper's Table 1, AUROC/AUPRC/FPR80 as its Table 2): "
      + ", ".join(os.path.join(f, "results.md") for f in folders),
      f"Plots: {os.path.join(paper_dir, 'roc_mnist.png')} (ROC curves) and "
      f"{os.path.join(paper_dir, 'hist_mnist.png')} (score histograms); decision threshold: "
      f"{os.path.join(paper_dir, 'threshold.json')}.",
  ]
  return lines


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  p.add_argument("--workdir", required=True, help="the quick start's WORKDIR")
  p.add_argument("--tiny", type=int, default=1, help="1: the tiny model was trained and scored")
  p.add_argument("--seconds", type=int, required=True, help="the quick start's wall time")
  a = p.parse_args()
  print("\n".join(summary(a.workdir, bool(a.tiny), a.seconds)))


if __name__ == "__main__":
  main()
