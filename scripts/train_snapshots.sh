#!/usr/bin/env bash
# Train a preset's model in resumable chunks and keep the EMA weights at each chunk end:
#   scripts/train_snapshots.sh PRESET DATASET STEP [STEP ...]
# Each chunk is `python -m pipeline train --set train.steps=STEP`, which resumes from the
# previous chunk's state; training is bit-for-bit the same as one uninterrupted run
# (tests/test_train.py: kill + rerun == uninterrupted), because the learning rate is
# constant after warm-up and the minibatch order depends on (seed, step) only.
# Snapshots land in build/PRESET/models/DATASET/snapshots/step-STEP/.
set -euo pipefail
preset=$1; ds=$2; shift 2
b=build/$preset
mkdir -p logs/$preset/train
if [ ! -f "$b/data/$ds/manifest.json" ]; then
  python -m pipeline --preset "$preset" prepare-data --dataset "$ds" --out "$b/data/$ds" --log "logs/$preset/prepare-data/$ds.log"
fi
for step in "$@"; do
  snap=$b/models/$ds/snapshots/step-$step
  [ -f "$snap/unet.safetensors" ] && continue
  python -m pipeline --preset "$preset" --set train.steps="$step" train --dataset "$ds" \
    --data "$b/data/$ds" --out "$b/models/$ds" --log "logs/$preset/train/$ds-$step.log"
  mkdir -p "$snap"
  cp "$b/models/$ds/unet.safetensors" "$b/models/$ds/unet.json" "$b/models/$ds/loss.csv" "$snap/"
done
