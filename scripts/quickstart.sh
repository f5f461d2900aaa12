#!/usr/bin/env bash
# The README's first command, a few minutes on 2 CPU cores:
#   1. train the tiny config for 400 steps and evaluate it against MNIST: training, checkpoints,
#      evaluation, tables, plots and a threshold work (a rerun resumes and reuses the workdir);
#   2. evaluate the shipped paper model (pretrained/fmnist_hvae) on a seeded 2,000 vs 2,000
#      FashionMNIST test / MNIST images: the paper's effect, ELBO fails and LLR^{>1} separates;
#   3. say what the numbers mean and where the tables and plots are.
# `bash scripts/quickstart.sh pretrained` runs steps 2 and 3 only. SEED (default 0) seeds the
# tiny run and both evaluations' subsets and samples; WORKDIR (default workdirs/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
# Data: $HVAE_DATA_DIR, else ../shared/data beside the clone if it is there; without either,
# the loader reads /usr/share/datasets/fashion-mnist or downloads the official files once.
if [[ -z "${HVAE_DATA_DIR:-}" && -d ../shared/data ]]; then
  export HVAE_DATA_DIR="$(cd ../shared/data && pwd)"
fi
WORKDIR="${WORKDIR:-workdirs/quickstart}"
SEED="${SEED:-0}"
case "${1:-all}" in
  all) TINY=1 ;;
  pretrained) TINY=0 ;;
  *) echo "error: unknown step '$1'; run 'bash scripts/quickstart.sh' or add 'pretrained'" >&2
     exit 2 ;;
esac
START=$SECONDS

if [[ $TINY == 1 ]]; then
  python train.py --config=configs/tiny.py --workdir="$WORKDIR" --config.seed="$SEED" \
    --config.train.max_steps=400
  python evaluate.py --workdir="$WORKDIR" --ood=mnist --max_examples=500 --seed="$SEED"
fi
# k = 1 only: the paper's FashionMNIST score, and a third less work than every k.
python evaluate.py --checkpoint=pretrained/fmnist_hvae --ood=mnist --max_examples=2000 --k=1 \
  --seed="$SEED" --output="$WORKDIR/pretrained_eval"

python scripts/quickstart_summary.py --workdir="$WORKDIR" --tiny="$TINY" \
  --seconds=$((SECONDS - START))
