#!/usr/bin/env bash
# The README's main command: train the tiny config on offline FashionMNIST, then score
# FashionMNIST (in) against MNIST (OOD). Rerunning resumes/reuses the workdir.
set -euo pipefail
cd "$(dirname "$0")/.."
export HVAE_DATA_DIR="${HVAE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
WORKDIR="${WORKDIR:-workdirs/quickstart}"
python train.py --config=configs/tiny.py --workdir="$WORKDIR" --config.train.max_steps=400
python evaluate.py --workdir="$WORKDIR" --ood=mnist --max_examples=2000 --iw_samples=4
