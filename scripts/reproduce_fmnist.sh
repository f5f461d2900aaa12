#!/usr/bin/env bash
# Re-run the FashionMNIST -> MNIST reproduction from scratch (docs/RESULTS.md).
#   bash scripts/reproduce_fmnist.sh [config] [workdir]
# Training resumes if interrupted: rerun the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
export HVAE_DATA_DIR="${HVAE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
CONFIG="${1:-configs/fmnist_hvae_small.py}"
WORKDIR="${2:-workdirs/$(basename "$CONFIG" .py)}"
python train.py --config="$CONFIG" --workdir="$WORKDIR"
# One-sample scores for every k, then the importance-weighted LLR^{>k}_S.
python evaluate.py --workdir="$WORKDIR" --ood=mnist --output="$WORKDIR/eval_s1"
python evaluate.py --workdir="$WORKDIR" --ood=mnist --iw_samples="${IW_SAMPLES:-250}" \
  --max_examples="${IW_MAX_EXAMPLES:-2000}" --output="$WORKDIR/eval_iw"
