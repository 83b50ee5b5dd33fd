r"""What the train loop costs over the bare jitted step: `train.train_loop` (data read and
placed while the device computes, metrics fetched every LOG_PERIOD steps, progress and
TensorBoard) against the same `train_step` called back to back on batches placed
beforehand, on the demo model and task.

Rounds alternate (bare, loop, bare, loop, ...). Each round prepares a fresh run in a
temporary MODEL_DIR and times steps `--log_period` .. `--steps`: from the first fetch of the
metrics (the step compiled before it) to the last, so start-up and the final save are
outside both timings. Prints one JSON line per round, then the median of the per-pair
ratios loop / bare with its min–max. From the repository root:

    JAX_PLATFORMS=cpu python benchmarks/loop_overhead.py --steps 60 --rounds 6
"""

import json
import os
import platform
import statistics
import tempfile
import time

from absl import app
from absl import flags
import gin
import jax

from prompt_tuning import gin_config
from prompt_tuning import train
from prompt_tuning.training import checkpoints
from prompt_tuning.training import data
from prompt_tuning.training import partitioning
from prompt_tuning.training import preemption
from prompt_tuning.training import progress
from prompt_tuning.training import runs

_STEPS = flags.DEFINE_integer('steps', 60, 'Steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 6, 'Paired rounds (bare and loop each once).')
_LOG_PERIOD = flags.DEFINE_integer('log_period', 10, 'LOG_PERIOD of the loop.')


def _prepared(model_dir: str):
  """(run, its training data config) of the demo, no evaluation, saving only at the end."""
  gin.clear_config()
  gin_config.parse(['demo.gin'], [f"MODEL_DIR = '{model_dir}'",
                                  f'TRAIN_STEPS = {_STEPS.value}',
                                  f'CHECKPOINT_PERIOD = {_STEPS.value}'])
  setup, train_data = runs.RunSetup(), data.DataConfig()
  run, _ = train.prepare(setup, _STEPS.value, train_data, None,
                         checkpoints.CheckpointConfig(), None)
  return run, train_data


def _bare(model_dir: str) -> float:
  """Seconds of steps log_period+1 .. steps, the step alone on batches placed beforehand."""
  run, train_data = _prepared(model_dir)
  batches = data.host_batches(train_data, 0, 1)
  placed = [partitioning.host_batch_to_global(run.mesh, next(batches))
            for _ in range(_STEPS.value)]
  for step, batch in enumerate(placed, 1):
    run.state, metrics = run.steps.train_step(run.state, run.frozen, batch)
    if step == _LOG_PERIOD.value:
      jax.block_until_ready(metrics)
      start = time.perf_counter()
  jax.block_until_ready(metrics)
  return time.perf_counter() - start


class _Timed(progress.Progress):
  """Progress that notes when each block of steps was reported: {last step: time}."""

  def __init__(self, *args):
    super().__init__(*args)
    self.reported = {}

  def train_steps(self, steps):
    self.reported[steps[-1][0]] = time.perf_counter()
    super().train_steps(steps)


def _loop(model_dir: str) -> float:
  """Seconds of steps log_period+1 .. steps in `train.train_loop`."""
  run, train_data = _prepared(model_dir)
  report = _Timed(model_dir, 0, _STEPS.value, train_data.batch_size)
  with preemption.PreemptionWatch() as watch:
    run.checkpoints.make_directories()
    train.train_loop(model_dir, run, _STEPS.value, train_data, None,
                     checkpoints.CheckpointConfig(period=_STEPS.value), report, watch,
                     _LOG_PERIOD.value)
  run.checkpoints.close()
  report.close()
  return report.reported[_STEPS.value] - report.reported[_LOG_PERIOD.value]


def main(argv):
  del argv
  timed = {'bare': [], 'loop': []}
  with tempfile.TemporaryDirectory() as root:
    for number in range(_ROUNDS.value):
      for name, measure in (('bare', _bare), ('loop', _loop)):
        timed[name].append(measure(os.path.join(root, f'{name}_{number}')))
      print(json.dumps({'round': number, **{k: round(v[-1], 3) for k, v in timed.items()}}),
            flush=True)
  ratios = [loop / bare for bare, loop in zip(timed['bare'], timed['loop'])]
  steps = _STEPS.value - _LOG_PERIOD.value
  print(json.dumps({
      'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}',
      'timed_steps': steps, 'rounds': _ROUNDS.value, 'log_period': _LOG_PERIOD.value,
      'bare_steps_per_s': round(steps / statistics.median(timed['bare']), 3),
      'loop_steps_per_s': round(steps / statistics.median(timed['loop']), 3),
      'loop_over_bare': {'median': round(statistics.median(ratios), 4),
                         'min': round(min(ratios), 4), 'max': round(max(ratios), 4)}}))


if __name__ == '__main__':
  app.run(main)
