r"""What resuming costs before the first step: the time `data.host_batches` takes to hand
over batch `start_step` of a file task (`tasks/user_task.py`), i.e. what
`dataset.skip(start_step)` replays, against batch 0.

Writes a TSV of `--examples` review-like lines (so batches wrap around the file many
times by step 10,000, as a long run's do), registers it with T5's vocabulary, and prints
one JSON line per start step: seconds to the first batch, and seconds per 1,000 skipped
steps. From the repository root:

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


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as directory:
    config = data.DataConfig(_write_task(directory), _LENGTHS, batch_size=_BATCH.value)
    for start_step in map(int, _START_STEPS.value):
      started = time.perf_counter()
      next(data.host_batches(config, 0, 1, start_step))
      seconds = time.perf_counter() - started
      print(json.dumps({'start_step': start_step, 'batch': _BATCH.value,
                        'examples_in_file': _EXAMPLES.value,
                        'seconds_to_first_batch': round(seconds, 2)}), flush=True)


if __name__ == '__main__':
  app.run(main)
