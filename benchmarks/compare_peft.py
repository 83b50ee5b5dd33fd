"""Our train step vs Hugging Face PEFT on the same T5 1.1 shapes, in alternating pairs.

Runs `benchmarks/train_step.py` (ours) and `benchmarks/peft_bench.py` (PEFT) one after the
other, A B A B ..., each run a fresh process (neither holds the cores or the accelerator
while the other runs): one untimed warm-up pair, then `--pairs` pairs. Between pairs a fresh
process times a jitted square matmul in the run's dtype (`benchmarks/matmul_peak.py`): the
machine's measured peak, taken in the same run. Prints each run's JSON line as it comes, then
the median of the per-pair ratios ours / PEFT steps/s with their min-max, each side's median
steps/s, tokens/s, model FLOP/s (`t5_flops.py`), utilisation against the median measured
peak and peak memory. Every line, and a last `"summary"` line, goes to `--out`. On a
shared, noisy machine only the paired ratio is worth comparing. From the repository root
(needs the `hf` extra for PEFT):

    python benchmarks/compare_peft.py --size small --batch 8 --inputs 128 --targets 8 \
        --prompt 20 --steps 10 --pairs 5 --device cpu --dtype float32 --out /tmp/peft.jsonl
    python benchmarks/compare_peft.py --device cuda --dtype bfloat16 --size base --batch 32 \
        --inputs 512 --targets 16 --prompt 100 --steps 10 --pairs 3

`--versus full` sets our `--method prompt` against our `--method full` instead of PEFT (the
prompt / full step-time ratio); `--device tpu` runs ours alone (PEFT has no TPU path).
bfloat16 is mixed precision on both sides: float32 weights, bfloat16 matmuls (ours
`--dtype bfloat16`, PEFT `--amp bfloat16`); `--ours_flags`/`--peft_flags` add more.
"""

import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import t5_flops  # benchmarks/t5_flops.py: this script's folder is on sys.path.

HERE = pathlib.Path(__file__).resolve().parent
MATMUL = {'cpu': (2048, 3), 'cuda': (8192, 50), 'tpu': (8192, 50)}  # Side, chained matmuls.


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', default='small', help='T5 1.1 size: small, base, large, xl, xxl.')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--inputs', type=int, default=128, help='Encoder input length.')
  p.add_argument('--targets', type=int, default=8, help='Decoder target length.')
  p.add_argument('--prompt', type=int, default=20, help='Prompt length P.')
  p.add_argument('--steps', type=int, default=10, help='Timed steps per run.')
  p.add_argument('--warmup', type=int, default=2,
                 help='Untimed steps per run (ours compiles on the first two).')
  p.add_argument('--method', choices=['prompt', 'full'], default='prompt')
  p.add_argument('--device', choices=['cpu', 'cuda', 'tpu'], default='cpu')
  p.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  p.add_argument('--dropout', type=float, default=0.1, help='Both sides.')
  p.add_argument('--pairs', type=int, default=5, help='Timed pairs after the warm-up pair.')
  p.add_argument('--no_warmup_pair', action='store_true', help='Skip the untimed first pair.')
  p.add_argument('--versus', choices=['peft', 'full'], default='peft',
                 help='B side: PEFT, or ours --method full (A is then ours --method prompt).')
  p.add_argument('--matmul_n', type=int, default=None, help='Matmul side (default by device).')
  p.add_argument('--ours_flags', default='', help='Extra flags for train_step.py.')
  p.add_argument('--peft_flags', default='', help='Extra flags for peft_bench.py.')
  p.add_argument('--budget_s', type=float, default=None,
                 help='Start no pair that would end past this many seconds (one timed pair '
                      'at least); the summary covers the pairs run.')
  p.add_argument('--out', default=None, help='Appends every JSON line here (JSONL).')
  p.add_argument('--png', default=None, help='Per-pair steps/s and ratios (needs matplotlib).')
  args = p.parse_args(argv)
  if args.pairs < 1 or args.steps < 1 or args.warmup < 1:
    p.error('--pairs, --steps and --warmup must be at least 1')
  return args


def commands(args) -> dict[str, list[str]]:
  """{side name: argv}: the sides of a pair in their order, then 'matmul'."""
  shapes = ['--size', args.size, '--batch', str(args.batch), '--inputs', str(args.inputs),
            '--targets', str(args.targets), '--prompt', str(args.prompt),
            '--steps', str(args.steps), '--warmup', str(args.warmup),
            '--dropout', str(args.dropout)]
  ours = [sys.executable, str(HERE / 'train_step.py'), *shapes, '--dtype', args.dtype,
          *shlex.split(args.ours_flags)]
  amp = ['--amp', 'bfloat16'] if args.dtype == 'bfloat16' else []
  peft = [sys.executable, str(HERE / 'peft_bench.py'), *shapes, '--method', args.method,
          '--device', args.device, *amp, *shlex.split(args.peft_flags)]
  n, iters = MATMUL[args.device]
  matmul = [sys.executable, str(HERE / 'matmul_peak.py'), '--n', str(args.matmul_n or n),
            '--iters', str(iters), '--dtype', args.dtype]
  if args.versus == 'full':
    sides = {'ours_prompt': ours + ['--method', 'prompt'], 'ours_full': ours + ['--method', 'full']}
  elif args.device == 'tpu':
    sides = {'ours': ours + ['--method', args.method]}  # PEFT has no TPU path.
  else:
    sides = {'ours': ours + ['--method', args.method], 'peft': peft}
  return {**sides, 'matmul': matmul}


def run_json(argv: list[str], env: dict) -> dict:
  """The last JSON line a fresh process prints; SystemExit with its last error line if none."""
  proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    errors = [l for l in proc.stderr.splitlines() if l.strip()] or ['(no output)']
    hint = next((l for l in reversed(errors) if 'Error' in l or 'RESOURCE_EXHAUSTED' in l),
                errors[-1])
    raise SystemExit(f'{pathlib.Path(argv[1]).name} failed (exit {proc.returncode}): '
                     f'{hint.strip()[:400]}')
  return json.loads(lines[-1])


def environment(args, cache_dir: str) -> dict:
  env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
             JAX_COMPILATION_CACHE_DIR=cache_dir)  # Later runs skip the compile, not timed.
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(HERE.parent), env.get('PYTHONPATH')]))
  if args.device == 'cpu':
    env['JAX_PLATFORMS'] = 'cpu'
  return env


def median_range(values: list[float]) -> dict:
  return {'median': statistics.median(values), 'min': min(values), 'max': max(values)}


def summarise(rows: list[dict], sides: list[str]) -> dict:
  """The medians over the timed pairs (rows with pair >= 1)."""
  timed = [r for r in rows if r['pair'] >= 1]
  by = {name: [r for r in timed if r['side'] == name] for name in sides + ['matmul']}
  peak = statistics.median(r['tflops_median'] for r in by['matmul']) * 1e12
  summary = {'summary': True, 'pairs': len(by[sides[0]]), 'sides': sides,
             'matmul': {'n': by['matmul'][0]['n'], 'dtype': by['matmul'][0]['dtype'],
                        'device_name': by['matmul'][0]['device_name'],
                        'tflops': median_range([r['tflops_median'] for r in by['matmul']])}}
  for name in sides:
    runs = by[name]
    flops = t5_flops.line_flops(runs[0])
    steps = statistics.median(r['steps_per_s'] for r in runs)
    summary[name] = {
        'steps_per_s': median_range([r['steps_per_s'] for r in runs]),
        'tokens_per_s': statistics.median(r['tokens_per_s'] for r in runs),
        'model_flops_per_step': flops,
        'model_tflops_per_s': flops * steps / 1e12,
        'utilisation': flops * steps / peak,
        'peak_mem_mb': statistics.median(r['peak_mem_mb'] for r in runs),
        'peak_mem_kind': runs[0]['peak_mem_kind'],
        'trainable_params': runs[0]['trainable_params'],
        'total_params': runs[0]['total_params'],
        'loss': [runs[-1]['loss_first'], runs[-1]['loss_last']],  # Of the last run.
        'device_name': runs[0]['device_name']}
  if len(sides) == 2:
    a, b = by[sides[0]], by[sides[1]]
    summary['ratio'] = median_range([x['steps_per_s'] / y['steps_per_s'] for x, y in zip(a, b)])
  return summary


def report(summary: dict) -> str:
  """The summary as a few readable lines."""
  sides, mm = summary['sides'], summary['matmul']
  lines = []
  if 'ratio' in summary:
    r = summary['ratio']
    lines.append(f"{sides[0]} / {sides[1]} steps/s (= {sides[1]} / {sides[0]} step time): "
                 f"median {r['median']:.2f}x "
                 f"(min {r['min']:.2f}x, max {r['max']:.2f}x) over {summary['pairs']} pairs")
  t = mm['tflops']
  lines.append(f"measured matmul peak ({mm['n']}^2 {mm['dtype']}, {mm['device_name']}): "
               f"{t['median']:.4g} TFLOP/s (min {t['min']:.4g}, max {t['max']:.4g})")
  lines.append(f"{'':22}" + ''.join(f'{name:>16}' for name in sides))
  rows = [('steps/s (median)', lambda s: f"{s['steps_per_s']['median']:.4g}"),
          ('steps/s (min-max)', lambda s: f"{s['steps_per_s']['min']:.3g}-"
                                          f"{s['steps_per_s']['max']:.3g}"),
          ('tokens/s', lambda s: f"{s['tokens_per_s']:.4g}"),
          ('model TFLOP/s', lambda s: f"{s['model_tflops_per_s']:.4g}"),
          ('utilisation', lambda s: f"{s['utilisation']:.1%}"),
          ('peak memory (MB)', lambda s: f"{s['peak_mem_mb']:.0f}"),
          ('trainable params', lambda s: f"{s['trainable_params']:,}"),
          ('loss, first -> last', lambda s: f"{s['loss'][0]:.3g} -> {s['loss'][1]:.3g}")]
  for label, cell in rows:
    lines.append(f'{label:22}' + ''.join(f'{cell(summary[name]):>16}' for name in sides))
  diverging = [name for name in sides  # A few steps of a prompt may leave it flat, not this.
               if not summary[name]['loss'][1] <= 1.5 * summary[name]['loss'][0]]
  if diverging:
    lines.append(f"warning: the loss grew by half or more on {', '.join(diverging)}: check its "
                 'optimiser settings before trusting these timings.')
  return '\n'.join(lines)


def plot(rows: list[dict], sides: list[str], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  timed = [r for r in rows if r['pair'] >= 1]
  fig, (left, right) = pyplot.subplots(1, 2, figsize=(9, 3.5))
  for name in sides:
    runs = [r for r in timed if r['side'] == name]
    left.plot([r['pair'] for r in runs], [r['steps_per_s'] for r in runs], 'o-', label=name)
  left.set(xlabel='pair', ylabel='steps/s', title='each run')
  left.legend()
  if len(sides) == 2:
    a, b = ([r for r in timed if r['side'] == name] for name in sides)
    right.plot([x['pair'] for x in a], [x['steps_per_s'] / y['steps_per_s'] for x, y in zip(a, b)],
               'o-')
    right.set(xlabel='pair', ylabel=f'{sides[0]} / {sides[1]}', title='per-pair ratio')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None):
  args = parse_args(argv)
  argvs = commands(args)
  sides = [name for name in argvs if name != 'matmul']
  if args.size == 'tiny' and 'peft' in sides:
    print("note: 'tiny' is another model in gin/models and peft_bench.py", file=sys.stderr)
  out = open(args.out, 'a') if args.out else None  # pylint: disable=consider-using-with
  rows = []
  start = time.monotonic()
  with tempfile.TemporaryDirectory(prefix='compare_peft_jax_cache_') as cache_dir:
    env = environment(args, os.environ.get('JAX_COMPILATION_CACHE_DIR') or cache_dir)
    for pair in range(1 if args.no_warmup_pair else 0, args.pairs + 1):
      pair_start = time.monotonic()
      for name in sides + ['matmul']:
        row = {'pair': pair, 'side': name, **run_json(argvs[name], env)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if out:
          out.write(json.dumps(row) + '\n')
          out.flush()
      now = time.monotonic()
      if (args.budget_s and pair >= 1 and pair < args.pairs
          and now - start + (now - pair_start) > args.budget_s):
        print(f'budget: stopping after {pair} of {args.pairs} pairs '
              f'({now - start:.0f} s of {args.budget_s:.0f} s)', file=sys.stderr, flush=True)
        break
  summary = {**summarise(rows, sides), 'argv': sys.argv[1:]}
  print(report(summary), flush=True)
  print(json.dumps(summary), flush=True)
  if out:
    out.write(json.dumps(summary) + '\n')
    out.close()
  if args.png:
    plot(rows, sides, args.png)


if __name__ == '__main__':
  main()
