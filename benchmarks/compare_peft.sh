#!/usr/bin/env bash
# Our train step vs Hugging Face PEFT prompt tuning on the same T5 1.1 shapes, one after the
# other in one run. Both JSON lines go to RESULTS (default /tmp/bench.jsonl, overwritten),
# then benchmarks/t5_flops.py turns them into model FLOP/s. The PEFT side
# (benchmarks/peft_bench.py) needs torch, transformers and peft: pip install -e '.[hf]'.
#
# Usage (from anywhere): benchmarks/compare_peft.sh [RESULTS]
# Shapes via env: SIZE=small BATCH=8 INPUTS=128 TARGETS=8 PROMPT=20 STEPS=10 WARMUP=2
#   METHOD=prompt|full DEVICE=cpu DROPOUT=0.1 PYTHON=.venv/bin/python
#   OURS_FLAGS="--dtype bfloat16" PEFT_FLAGS="--amp bfloat16"  (implementation-specific)
# Example: METHOD=full STEPS=5 benchmarks/compare_peft.sh /tmp/full.jsonl
set -euo pipefail

cd "$(dirname "$0")/.."
RESULTS="${1:-/tmp/bench.jsonl}"
SIZE="${SIZE:-small}" BATCH="${BATCH:-8}" INPUTS="${INPUTS:-128}" TARGETS="${TARGETS:-8}"
PROMPT="${PROMPT:-20}" STEPS="${STEPS:-10}" WARMUP="${WARMUP:-2}" METHOD="${METHOD:-prompt}"
DEVICE="${DEVICE:-cpu}" DROPOUT="${DROPOUT:-0.1}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
PEFT_BENCH=benchmarks/peft_bench.py
T5_FLOPS=benchmarks/t5_flops.py
[[ -f "$PEFT_BENCH" ]] || { echo "missing $PEFT_BENCH" >&2; exit 1; }
[[ "$SIZE" == tiny ]] && echo "note: 'tiny' differs between gin/models and peft_bench" >&2

COMMON=(--size "$SIZE" --batch "$BATCH" --inputs "$INPUTS" --targets "$TARGETS"
        --prompt "$PROMPT" --steps "$STEPS" --warmup "$WARMUP" --method "$METHOD")
if [[ "$DEVICE" == cpu ]]; then export JAX_PLATFORMS=cpu; fi

: > "$RESULTS"
echo "== prompt_tuning (jax): ${COMMON[*]}" >&2
# shellcheck disable=SC2086
"$PYTHON" benchmarks/train_step.py "${COMMON[@]}" --dropout "$DROPOUT" ${OURS_FLAGS:-} \
  | grep '^{' >> "$RESULTS"
echo "== peft (torch): ${COMMON[*]} --device $DEVICE" >&2
# shellcheck disable=SC2086
HF_HUB_OFFLINE=1 "$PYTHON" "$PEFT_BENCH" "${COMMON[@]}" --device "$DEVICE" \
  --dropout "$DROPOUT" ${PEFT_FLAGS:-} | grep '^{' >> "$RESULTS"

echo "results: $RESULTS"
cat "$RESULTS"
if [[ -f "$T5_FLOPS" ]]; then
  echo "t5_flops.py (row 1: prompt_tuning(jax), row 2: peft):"
  "$PYTHON" "$T5_FLOPS" "$RESULTS" || echo "t5_flops.py could not read $RESULTS" >&2
fi
