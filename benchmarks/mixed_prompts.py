"""What mixing tasks in one batch costs: K prompts per batch against one task per batch.

The same B examples are served three ways by one frozen random-weight T5 1.1, each jitted
once per batch shape:
- `single`: the model built with one prompt as its parameter (how a run evaluates today);
- `one_task`: a `PromptTable` of K prompts, every example of the batch naming the same one;
- `mixed`: the same table, the batch's examples spread over the K prompts (ids 0..K-1).
Each is timed for `score_batch` (rank classification) and `predict_batch` (greedy decoding)
in alternating rounds (single, one_task, mixed, single, ...), and the script prints, per
workload, the median of the per-round ratios mixed / single and mixed / one_task with their
min-max, plus each mode's median examples/s, as one JSON line. From the repository root:

    JAX_PLATFORMS=cpu python benchmarks/mixed_prompts.py --size small --batch 32 \
        --inputs 128 --targets 8 --prompt 20 --tasks 4 --rounds 7
"""

import functools
import json
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

from prompt_tuning import gin_config
from prompt_tuning.model import models
from prompt_tuning.model import network
from prompt_tuning.model import prompts


_SIZE = flags.DEFINE_string('size', 'small', 'T5 1.1 size: a gin/models/t5_1_1_<size>.gin.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Examples per batch.')
_INPUTS = flags.DEFINE_integer('inputs', 128, 'Encoder input length.')
_TARGETS = flags.DEFINE_integer('targets', 8, 'Target (and decode) length.')
_PROMPT = flags.DEFINE_integer('prompt', 20, 'Prompt length of every task.')
_TASKS = flags.DEFINE_integer('tasks', 4, 'K: prompts in the mixed batch.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Alternating rounds (each times every mode).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Calls per mode and round.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Activation dtype (T5Config.dtype).')

MODES = ('single', 'one_task', 'mixed')


def workloads(config: network.T5Config, batch: dict, table: prompts.PromptTable):
  """{workload: {mode: a no-argument callable that runs it once and blocks}}."""
  frozen_model = models.EncoderDecoderModel(network.Transformer(config))
  prompted = models.EncoderDecoderModel(network.Transformer(config, prompt_length=_PROMPT.value))
  frozen = frozen_model.init(jax.random.PRNGKey(0), batch)
  with_prompt = {**frozen, 'encoder': {**frozen['encoder'],
                                       'prompt': {'prompt': table.prompts[0]}}}
  ids = {'one_task': np.zeros(_BATCH.value, np.int32),
         'mixed': np.arange(_BATCH.value, dtype=np.int32) % _TASKS.value}
  result = {}
  for name, method in (('score', 'score_batch'), ('decode', 'predict_batch')):
    single = jax.jit(getattr(prompted, method))
    from_table = jax.jit(lambda params, batch, table, method=method: getattr(
        frozen_model, method)(params, batch, prompt_table=table))
    calls = {'single': functools.partial(single, with_prompt, batch)}
    for mode in ('one_task', 'mixed'):
      calls[mode] = functools.partial(from_table, frozen, {**batch, 'prompt_ids': ids[mode]},
                                      table)
    result[name] = {mode: (lambda call=call: jax.block_until_ready(call()))
                    for mode, call in calls.items()}
  return result


def main(argv):
  del argv
  gin_config.parse([gin_config.model_gin_file(_SIZE.value)],
                   [f"network.T5Config.dtype = '{_DTYPE.value}'"])
  config = models.build_model().module.config
  rng = np.random.RandomState(0)
  shapes = models.EncoderDecoderModel.batch_shapes(
      {'inputs': _INPUTS.value, 'targets': _TARGETS.value}, _BATCH.value)
  batch = {name: rng.randint(2, config.vocab_size, shape.shape).astype(np.int32)
           for name, shape in shapes.items()}
  batch['decoder_loss_weights'] = np.ones_like(batch['decoder_target_tokens'])
  table = prompts.pad_prompts([rng.uniform(-0.5, 0.5, (_PROMPT.value, config.emb_dim)).astype(
      np.float32) for _ in range(_TASKS.value)])
  report = {'size': _SIZE.value, 'batch': _BATCH.value, 'inputs': _INPUTS.value,
            'targets': _TARGETS.value, 'prompt': _PROMPT.value, 'tasks': _TASKS.value,
            'rounds': _ROUNDS.value, 'device': jax.devices()[0].device_kind,
            'devices': jax.device_count(), 'machine': platform.processor() or platform.machine()}
  for workload, calls in workloads(config, batch, table).items():
    for call in calls.values():
      call()  # Compile.
    seconds = {mode: [] for mode in MODES}
    for _ in range(_ROUNDS.value):
      for mode in MODES:
        start = time.perf_counter()
        for _ in range(_REPEATS.value):
          calls[mode]()
        seconds[mode].append((time.perf_counter() - start) / _REPEATS.value)
    for baseline in ('single', 'one_task'):
      ratios = [b / m for b, m in zip(seconds[baseline], seconds['mixed'])]  # Throughput.
      report[f'{workload}_mixed_vs_{baseline}'] = {
          'median': round(statistics.median(ratios), 3), 'min': round(min(ratios), 3),
          'max': round(max(ratios), 3)}
    for mode in MODES:
      report[f'{workload}_{mode}_examples_per_s'] = round(
          _BATCH.value / statistics.median(seconds[mode]), 1)
  print(json.dumps(report))


if __name__ == '__main__':
  app.run(main)
