r"""What resuming costs before the first step: the time `data.host_batches` takes to hand
over batch `start_step` of a file task (`tasks/user_task.py`), two ways: replaying the
batches before it (`dataset.skip`, what a run without a saved data position does) and
restoring the data position a checkpoint saves with it (what `train` does).

Writes a TSV of `--examples` review-like lines (so batches wrap around the file many
times by step 10,000, as a long run's do) and registers it with T5's vocabulary. One
straight pass saves the position at each start step; then each start step is timed both
ways, and checked to give the same batch. One JSON line per start step. From the
repository root:

    JAX_PLATFORMS=cpu python benchmarks/resume_cost.py --start_steps 0,1000,10000 --batch 32
"""

import json
import os
import random
import tempfile
import time

from absl import app
from absl import flags

from prompt_tuning.training import data
from tasks import user_task

_START_STEPS = flags.DEFINE_list('start_steps', ['0', '1000', '10000'], 'Steps to resume at.')
_BATCH = flags.DEFINE_integer('batch', 32, 'BATCH_SIZE.')
_EXAMPLES = flags.DEFINE_integer('examples', 20000, 'Lines in the training file.')
_LENGTHS = {'inputs': 128, 'targets': 8}
_VOCABULARY = os.path.join(os.path.dirname(__file__), '..', 'tests', 'data', 't5_vocab',
                           'sentencepiece.model')


def _write_task(directory: str) -> str:
  """Registers `resume_cost_reviews` from a TSV in `directory`; returns its name."""
  words = ('the plot was dull and slow but the acting was bright warm and funny at times '
           'while the music felt loud').split()
  rng = random.Random(0)
  path = os.path.join(directory, 'train.tsv')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('sentence\tlabel\n')
    for _ in range(_EXAMPLES.value):
      f.write(' '.join(rng.choices(words, k=rng.randint(8, 40))) + '\t'
              + rng.choice(['positive', 'negative']) + '\n')
  user_task.register_file_task('resume_cost_reviews', path, path, 'sentence', 'label',
                               os.path.abspath(_VOCABULARY), ['negative', 'positive'])
  return 'resume_cost_reviews'


def _timed(make_batches):
  """(seconds to the first batch, that batch)."""
  started = time.perf_counter()
  batch = next(make_batches())
  return time.perf_counter() - started, batch


def main(argv):
  del argv
  start_steps = sorted(map(int, _START_STEPS.value))
  with tempfile.TemporaryDirectory() as directory:
    config = data.DataConfig(_write_task(directory), _LENGTHS, batch_size=_BATCH.value)
    straight, positions = data.host_batches(config, 0, 1), {}
    for step in range(start_steps[-1] + 1):
      if step in start_steps:
        positions[step] = os.path.join(directory, f'position_{step}')
        straight.save(positions[step])
      if step < start_steps[-1]:
        next(straight)
    for step in start_steps:
      replay_s, replayed = _timed(lambda: data.host_batches(config, 0, 1, step))
      restore_s, restored = _timed(
          lambda: data.host_batches(config, 0, 1, position=positions[step]))
      assert all((replayed[k] == restored[k]).all() for k in replayed)
      print(json.dumps({'start_step': step, 'batch': _BATCH.value,
                        'examples_in_file': _EXAMPLES.value,
                        'replay_s': round(replay_s, 2), 'restore_s': round(restore_s, 2)}),
            flush=True)


if __name__ == '__main__':
  app.run(main)
