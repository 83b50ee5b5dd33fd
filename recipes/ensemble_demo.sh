#!/usr/bin/env bash
# Prompt ensembles (the paper's §6) on the demo model: trains K prompts of one task that differ
# only in SEED (prompt initialisation and data order), then evaluates each, their mean and
# best, and their ensemble in shared batches (table on stdout, PNG in WORK_DIR/eval).
#
#   recipes/ensemble_demo.sh [WORK_DIR] [K] [TASK] [TRAIN_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/prompt_ensemble}"
K="${2:-5}"
TASK="${3:-demo_aspect}"
STEPS="${4:-300}"
PROMPTS=()
for ((seed = 0; seed < K; seed++)); do
  python -m prompt_tuning.train --gin_file=demo.gin --gin.MODEL_DIR="'$WORK/seed_$seed'" \
    --gin.MIXTURE_OR_TASK_NAME="'$TASK'" --gin.SEED="$seed" --gin.TRAIN_STEPS="$STEPS" \
    --gin.EVAL_PERIOD=0
  PROMPTS+=(--prompt "seed_$seed=$WORK/seed_$seed")
done
python -m prompt_tuning.evaluate --gin_file=demo.gin --gin_file=runs/prompt_eval.gin \
  --gin.MODEL_DIR="'$WORK'" "${PROMPTS[@]}"
