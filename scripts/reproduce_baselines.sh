#!/usr/bin/env bash
# The competing OOD scores of docs/RESULTS.md on a trained FashionMNIST model:
# trains the background model (Ren et al.) and the extra ensemble members (WAIC), then scores
# everything in one evaluate.py run.
#   bash scripts/reproduce_baselines.sh [workdir of the trained model] [config]
# Every training resumes if interrupted: rerun the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
export HVAE_DATA_DIR="${HVAE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
RUN="${1:-workdirs/fmnist_hvae_small}"   # scripts/reproduce_fmnist.sh trains it
CONFIG="${2:-configs/fmnist_hvae_small.py}"
AUX_EPOCHS="${AUX_EPOCHS:-4}"            # epochs of the background model and ensemble members
SEEDS="${SEEDS:-1 2 3 4}"                # extra ensemble members: with RUN, Choi et al.'s 5 models
# Background model: same architecture, every training input perturbed afresh each step with
# Ren et al.'s mu = 0.2.
python train.py --config="$CONFIG" --workdir="${RUN}_bg" --config.data.perturb_rate=0.2 \
  --config.train.epochs="$AUX_EPOCHS"
MEMBERS=()
for seed in $SEEDS; do
  python train.py --config="$CONFIG" --config.seed="$seed" --workdir="${RUN}_seed$seed" \
    --config.train.epochs="$AUX_EPOCHS"
  MEMBERS+=("${RUN}_seed$seed")
done
python evaluate.py --workdir="$RUN" --ood=mnist --scores=all \
  --background_checkpoint="${RUN}_bg" --ensemble_checkpoints="$(IFS=,; echo "${MEMBERS[*]}")" \
  --max_examples="${MAX_EXAMPLES:-1000}" --output="$RUN/eval_all"
