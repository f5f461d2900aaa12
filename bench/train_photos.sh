#!/usr/bin/env bash
# Long background CPU run: configs/cifar_hvae.py, then the paper BIVA (configs/cifar_biva.py),
# trained on real photographs (the offline 'photos' source, hvae_jax/data/photos.py), each into
# $RUNS/photos_<config> outside the work tree. Resumable: rerun the same command and each model
# continues from its newest checkpoint (train.py resumes its workdir; a finished model only
# recompiles and exits). Ctrl-C or `kill` saves the step in progress first.
#
#   mkdir -p ~/runs && nohup nice -n 10 bench/train_photos.sh >> ~/runs/train_photos.log 2>&1 &
#   python bench/training_report.py ~/runs/photos_cifar_hvae --plot=hvae_bpd.png
#
# Models, optimiser and batch (128) are the paper's; the schedule is the paper's in fractions
# of the run, scaled to EPOCHS as configs/fmnist_hvae_cpu.py does for FashionMNIST: KL warm-up
# over the first 10% (the paper's 200 of 2000 epochs), free bits for the first 20% (400 of
# 2000). Keep EPOCHS fixed for a run: the schedule of a resumed run follows it.
# One epoch of the photos' 7037 training patches is 54 steps of 128.
#
# Environment: RUNS (default ~/runs), EPOCHS (per model, default 10), MODELS (default
# "cifar_hvae cifar_biva"); arguments go to train.py, e.g. --config.train.grad_clip=200.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-$HOME/runs}"
EPOCHS="${EPOCHS:-10}"
MODELS="${MODELS:-cifar_hvae cifar_biva}"
warmup=$(python -c "print($EPOCHS * 0.1)")
free_bits=$(python -c "print($EPOCHS * 0.2)")

for model in $MODELS; do
  workdir="$RUNS/photos_$model"
  echo "$(date -u +%FT%TZ) $model: $EPOCHS epochs into $workdir"
  python train.py --config="configs/$model.py" --workdir="$workdir" \
    --config.data.source=photos \
    --config.train.epochs="$EPOCHS" \
    --config.train.warmup_epochs="$warmup" \
    --config.train.free_bits_epochs="$free_bits" \
    --config.train.eval_every_epochs=1 \
    --config.train.log_every_steps=2 \
    --config.train.checkpoint_every_steps=20 \
    --config.train.sample_grid=64 \
    "$@"
done
echo "$(date -u +%FT%TZ) done"
