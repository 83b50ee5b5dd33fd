#!/usr/bin/env bash
# Rebuilds the demo model shipped in prompt_tuning/assets/demo, the way the paper's models
# were made: T5 span corruption, then LM adaptation (prefix LM), on the generated review
# corpus of tasks/synthetic_reviews.py. Model tuning of every weight, on CPU.
#
#   recipes/pretrain_demo_model.sh [WORK_DIR] [SPAN_STEPS] [PREFIX_LM_STEPS] [PACKAGE]
#
# PACKAGE=0 trains only (the test suite runs a few steps that way); the default, 1, also
# rebuilds the vocabulary first and packages the result into the assets at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-/tmp/demo_pretraining}"
SPAN_STEPS="${2:-600}"
PREFIX_STEPS="${3:-600}"
PACKAGE="${4:-1}"
COMMON=(--gin_file=models/demo_t5.gin --gin_file=runs/prompt_finetune.gin
        --gin_file=runs/model_finetune.gin
        --gin.MIXTURE_OR_TASK_MODULE="'tasks.demo'" --gin.BATCH_SIZE=64
        --gin.train.train.eval_data=None --gin.CHECKPOINT_PERIOD=500 --gin.LEARNING_RATE=0.01)

if [[ "$PACKAGE" == 1 ]]; then python -m tasks.make_demo_vocabulary; fi
python -m prompt_tuning.train "${COMMON[@]}" \
  --gin.MODEL_DIR="'$WORK/span_corruption'" --gin.MIXTURE_OR_TASK_NAME="'demo_span_corruption'" \
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 48, 'targets': 16}" --gin.TRAIN_STEPS="$SPAN_STEPS"
python -m prompt_tuning.train "${COMMON[@]}" \
  --gin.MODEL_DIR="'$WORK/prefix_lm'" --gin.MIXTURE_OR_TASK_NAME="'demo_prefix_lm'" \
  --gin.INITIAL_CHECKPOINT_PATH="'$WORK/span_corruption/params'" \
  --gin.TASK_FEATURE_LENGTHS="{'inputs': 48, 'targets': 48}" --gin.TRAIN_STEPS="$PREFIX_STEPS"
if [[ "$PACKAGE" == 1 ]]; then
  python -m prompt_tuning.demo_model --params="$WORK/prefix_lm/params"
fi
