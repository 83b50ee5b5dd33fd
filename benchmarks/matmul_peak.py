"""The device's measured matmul peak: a jitted square N x N matmul, FLOP/s as one JSON line.

What a run's model FLOP/s is set against (utilisation), measured on the same machine in the
same run by `benchmarks/compare_peft.py` (between its pairs, each time a fresh process).
`--repeats` timings of `--iters` chained matmuls each; the median is reported. From the
repository root:

    JAX_PLATFORMS=cpu python benchmarks/matmul_peak.py --n 2048 --dtype float32
    python benchmarks/matmul_peak.py --n 8192 --dtype bfloat16 --iters 50   # GPU / TPU
"""

import argparse
import json
import statistics
import time

import jax


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--n', type=int, default=2048, help='Matrix side.')
  parser.add_argument('--dtype', default='float32', help='float32 | bfloat16.')
  parser.add_argument('--iters', type=int, default=3, help='Chained matmuls per timing.')
  parser.add_argument('--repeats', type=int, default=5, help='Timings; the median is kept.')
  args = parser.parse_args()

  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.random.normal(k, (args.n, args.n), args.dtype) / args.n**0.5 for k in keys)

  @jax.jit
  def chain(a, b):  # Each product feeds the next, so none can be skipped or overlapped.
    return jax.lax.fori_loop(0, args.iters, lambda _, x: x @ b, a)

  jax.block_until_ready(chain(a, b))  # Compile.
  seconds = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(chain(a, b))
    seconds.append(time.perf_counter() - start)
  flops = 2 * args.n**3 * args.iters
  device = jax.devices()[0]
  print(json.dumps({
      'bench': 'matmul_peak', 'n': args.n, 'dtype': args.dtype, 'iters': args.iters,
      'device': device.platform, 'device_name': device.device_kind,
      'tflops_median': round(flops / statistics.median(seconds) / 1e12, 4),
      'tflops_max': round(flops / min(seconds) / 1e12, 4),
      'seconds': [round(s, 5) for s in seconds]}), flush=True)


if __name__ == '__main__':
  main()
