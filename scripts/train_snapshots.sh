#!/usr/bin/env bash
# Train a preset's model in resumable chunks and keep the EMA weights at each chunk end:
#   scripts/train_snapshots.sh PRESET DATASET STEP [STEP ...]
# Each chunk is `python -m pipeline train --set train.steps=STEP`, which resumes from the
# previous chunk's state; training is bit-for-bit the same as one uninterrupted run
# (tests/test_train.py: kill + rerun == uninterrupted; tests/test_scripts.py: this script),
# because the learning rate is constant after warm-up and the minibatch order depends on
# (seed, step) only.
#
# It always trains (`model.checkpoint=null`: a preset that ships a checkpoint, like `cpu`,
# would otherwise import that file), in a tree of its own so that it never touches
# Snakemake's outputs in build/PRESET/:
#   $SNAPSHOT_DIR/PRESET/models/DATASET/               the latest weights (default
#                                                      SNAPSHOT_DIR=build/snapshot-train)
#   $SNAPSHOT_DIR/PRESET/models/DATASET/snapshots/step-STEP/   unet.safetensors, unet.json, loss.csv
#   $SNAPSHOT_DIR/PRESET/resume/DATASET/               the resume state: put a saved state here
#                                                      (a state-*.safetensors + state.json pair)
#                                                      to train on from it
#   $SNAPSHOT_DIR/PRESET/logs/                         the stages' logs
# DATA=dir uses an already prepared data set (default: build/PRESET/data/DATASET, prepared
# if absent); PIPELINE_ARGS adds global options (e.g. "--set train.batch_size=32").
# A data set whose `overrides.<name>.model` names a checkpoint (the embedded default's
# mnist-cpu) samples that file whatever --set says: train the data set it was trained on.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: scripts/train_snapshots.sh PRESET DATASET STEP [STEP ...]" >&2; exit 2
fi
preset=$1; ds=$2; shift 2
for step in "$@"; do
  [[ $step =~ ^[0-9]+$ ]] || { echo "train_snapshots.sh: STEP must be a whole number, got '$step'" >&2; exit 2; }
done
root=${SNAPSHOT_DIR:-build/snapshot-train}
out=$root/$preset/models/$ds
data=${DATA:-build/$preset/data/$ds}
# shellcheck disable=SC2206
extra=(${PIPELINE_ARGS:-})
# the script's own --set come last: they win over PIPELINE_ARGS
run=(python -m pipeline --preset "$preset" "${extra[@]}" --set run.build_dir="$root" --set model.checkpoint=null)
logs=$root/$preset/logs
if [ ! -f "$data/manifest.json" ]; then
  "${run[@]}" prepare-data --dataset "$ds" --out "$data" --log "$logs/prepare-data-$ds.log"
fi
for step in "$@"; do
  snap=$out/snapshots/step-$step
  [ -f "$snap/unet.safetensors" ] && continue
  "${run[@]}" --set train.steps="$step" train --dataset "$ds" --data "$data" --out "$out" \
    --log "$logs/train-$ds-$step.log"
  mkdir -p "$snap.tmp"
  cp "$out/unet.safetensors" "$out/unet.json" "$out/loss.csv" "$snap.tmp/"
  rm -rf "$snap"; mv "$snap.tmp" "$snap"   # a killed copy leaves no half snapshot
done
