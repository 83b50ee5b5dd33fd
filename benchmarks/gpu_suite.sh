#!/usr/bin/env bash
# One GPU, one command, about 8 minutes: ours vs Hugging Face PEFT prompt tuning in bfloat16,
# in alternating pairs of fresh processes (benchmarks/compare_peft.py), on T5 1.1 small, base
# and XL (P=100, batch 32, inputs 512, targets 16; fewer pairs and steps for bigger sizes),
# each with its model FLOP utilisation against the matmul peak measured in the same run;
# the prompt / full step-time ratio of ours on base; and whether XXL prompt tuning runs on the
# card (one step of ours, frozen weights in bfloat16, full remat: peak memory, or the reason).
# Prints a table at the end; every JSON line lands in OUT_DIR (default /tmp/gpu_suite).
# On TPU (jax.default_backend() == 'tpu') it runs ours alone: PEFT has no TPU path.
# Exits 2 with one line "no GPU: ..." when jax sees no GPU (or TPU) or torch.cuda is unavailable.
#
# Usage, from anywhere (needs the hf extra: torch with CUDA, transformers, peft):
#   benchmarks/gpu_suite.sh [OUT_DIR]        # PYTHON=... to pick the interpreter
#   benchmarks/gpu_suite.sh --cpu-smoke [OUT_DIR]   # the same plumbing on CPU, tiny shapes,
#                                                   # one pair each (minutes; figures meaningless)
set -uo pipefail

cd "$(dirname "$0")/.."
SMOKE=0
if [[ "${1:-}" == --cpu-smoke ]]; then SMOKE=1; shift; fi
OUT="${1:-/tmp/gpu_suite}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

if [[ $SMOKE == 1 ]]; then BACKEND=smoke; CUDA=-; else
read -r BACKEND CUDA < <("$PYTHON" - 2>/dev/null <<'EOF'
import jax
try:
  import torch
  cuda = torch.cuda.is_available()
except ImportError:
  cuda = 'not-installed'
print(jax.default_backend(), cuda)
EOF
) || true
fi
case "${BACKEND:-none}" in
  smoke)
    DEVICE=cpu
    export JAX_PLATFORMS=cpu ;;
  gpu)
    if [[ "$CUDA" != True ]]; then
      echo "no GPU: jax sees a GPU but torch.cuda.is_available() is $CUDA (PEFT needs CUDA torch)"
      exit 2
    fi
    DEVICE=cuda ;;
  tpu)
    DEVICE=tpu
    echo "TPU: ours only (PEFT has no TPU path)" ;;
  *)
    echo "no GPU: jax.default_backend() is '${BACKEND:-unavailable}'," \
      "torch.cuda.is_available() is ${CUDA:-unknown}"
    exit 2 ;;
esac

mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl
export JAX_COMPILATION_CACHE_DIR="$OUT/jax_cache"  # Each size compiles once, not per run.
SHAPES=(--batch 32 --inputs 512 --targets 16 --prompt 100 --dtype bfloat16 --device "$DEVICE")
SCALE=1  # Stage budgets x SCALE.
SMALL=(--size small --steps 20 --pairs 3)
BASE=(--size base --steps 10 --pairs 3)
XL=(--size xl --steps 5 --pairs 2 --no_warmup_pair)
FULL=(--size base --steps 5 --pairs 2 --no_warmup_pair)
XXL=(--size xxl --batch 32 --inputs 512 --targets 16 --prompt 100 --dtype bfloat16)
if [[ $SMOKE == 1 ]]; then
  SHAPES=(--batch 2 --inputs 16 --targets 4 --prompt 3 --dtype float32 --device cpu
          --matmul_n 256)
  SMALL=(--size tiny --steps 1 --pairs 1 --no_warmup_pair)
  BASE=("${SMALL[@]}") XL=("${SMALL[@]}") FULL=("${SMALL[@]}")
  XXL=(--size tiny --batch 2 --inputs 16 --targets 4 --prompt 3 --dtype float32)
  SCALE=4  # A shared 2-core CPU compiles slowly.
fi

# stage NAME BUDGET_S compare_peft.py flags...: its report lines; JSON lines to OUT/NAME.jsonl.
stage() {
  local name=$1 budget=$2
  shift 2
  echo "== $name: ${*}"
  budget=$((budget * SCALE))
  timeout "$((budget + 60))" "$PYTHON" benchmarks/compare_peft.py "${SHAPES[@]}" "$@" \
    --budget_s "$budget" --out "$OUT/$name.jsonl" 2>"$OUT/$name.err" | grep -v '^{'
  local rc=${PIPESTATUS[0]}
  if [[ $rc -eq 124 ]]; then
    echo "$name: timed out after $((budget + 60)) s"
  elif [[ $rc -ne 0 ]]; then
    echo "$name: failed (exit $rc): $(tail -n 1 "$OUT/$name.err")"
  fi
}

START=$SECONDS
stage small 70 "${SMALL[@]}"
stage base 80 "${BASE[@]}"
stage xl 110 "${XL[@]}"
stage base_full_vs_prompt 60 "${FULL[@]}" --versus full

echo "== xxl: one step of ours, frozen bfloat16, remat full"
timeout $((150 * SCALE)) "$PYTHON" benchmarks/train_step.py "${XXL[@]}" --frozen_dtype bfloat16 \
  --remat full --steps 1 --warmup 1 >"$OUT/xxl.jsonl" 2>"$OUT/xxl.err"
XXL_RC=$?

"$PYTHON" - "$OUT" "$XXL_RC" "$((150 * SCALE))" <<'EOF'
import json, os, sys
out, xxl_rc, xxl_limit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f"\n{'run':22}{'ratio med (min-max)':>24}{'A steps/s':>11}{'B steps/s':>11}"
      f"{'A util':>8}{'B util':>8}{'A MB':>8}{'B MB':>8}")
for name in ('small', 'base', 'xl', 'base_full_vs_prompt'):  # In the order they ran.
  path = os.path.join(out, f'{name}.jsonl')
  summaries = [json.loads(l) for l in open(path) if l.startswith('{"summary"')] if os.path.exists(
      path) else []
  if not summaries:
    continue
  s = summaries[-1]
  sides = s['sides'] + [None] * (2 - len(s['sides']))
  r = s.get('ratio')
  ratio = f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})" if r else '-'
  cell = lambda side, f: f(s[side]) if side else '-'
  print(f"{name:22}{ratio:>24}"
        f"{cell(sides[0], lambda x: format(x['steps_per_s']['median'], '.3g')):>11}"
        f"{cell(sides[1], lambda x: format(x['steps_per_s']['median'], '.3g')):>11}"
        f"{cell(sides[0], lambda x: format(x['utilisation'], '.0%')):>8}"
        f"{cell(sides[1], lambda x: format(x['utilisation'], '.0%')):>8}"
        f"{cell(sides[0], lambda x: format(x['peak_mem_mb'], '.0f')):>8}"
        f"{cell(sides[1], lambda x: format(x['peak_mem_mb'], '.0f')):>8}")
  print(f"{'':22}A={sides[0]} B={sides[1]}; matmul peak {s['matmul']['tflops']['median']:.4g}"
        f" TFLOP/s ({s['matmul']['n']}^2 {s['matmul']['dtype']})")
lines = [l for l in open(os.path.join(out, 'xxl.jsonl')) if l.startswith('{')]
if lines:
  x = json.loads(lines[-1])
  print(f"xxl prompt tuning: runs; peak memory {x['peak_mem_mb'] / 1024:.1f} GiB "
        f"({x['peak_mem_kind']}, init included) on {x['device_name']}")
else:
  err = [l.strip() for l in open(os.path.join(out, 'xxl.err')) if l.strip()]
  why = next((l for l in reversed(err) if 'RESOURCE_EXHAUSTED' in l or 'memory' in l.lower()),
             err[-1] if err else '')
  what = f'timed out after {xxl_limit} s' if xxl_rc == 124 else f'exit {xxl_rc}'
  print(f"xxl prompt tuning: does not run ({what}): {why[:300]}")
EOF
echo "suite: $((SECONDS - START)) s; JSON lines in $OUT"
