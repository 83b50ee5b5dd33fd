"""`sharded_sentiment`: tiny_task's reviews in TSV files, two for the training split, so
each of two hosts reads its own file through seqio's `ShardInfo`.

Files live in `$SHARDED_TASK_DIR` (written by `write_files`). Every example read is logged
by id to `$SHARD_LOG.<process index>`, so a test can check which host read what.
"""

import os

import jax
import seqio
import tensorflow as tf

import tiny_task
from paths import VOCAB_PATH


def write_files(directory: str) -> list[str]:
  """train-0.tsv (even examples), train-1.tsv (odd), validation.tsv, lines `id TAB input
  TAB target` (validation ids start with 'v'); returns the training ids in the order one
  host reads them."""
  def write(name, numbered_examples, prefix=''):
    with open(os.path.join(directory, name), 'w') as f:
      f.writelines(f'{prefix}{i}\t{e["inputs"].decode()}\t{e["targets"].decode()}\n'
                   for i, e in numbered_examples)

  numbered = lambda split: enumerate(tiny_task.reviews(split).as_numpy_iterator())
  train = list(numbered('train'))
  for shard in (0, 1):
    write(f'train-{shard}.tsv', train[shard::2])
  write('validation.tsv', numbered('validation'), 'v')
  return [str(i) for i, _ in train]


def _log_id(example_id):
  with open(f'{os.environ["SHARD_LOG"]}.{jax.process_index()}', 'a') as f:
    f.write(example_id.numpy().decode() + '\n')
  return example_id


@seqio.map_over_dataset
def parse_line(line):
  example_id, inputs, targets = tf.io.decode_csv(line, ['', '', ''], field_delim='\t',
                                                 use_quote_delim=False)
  logged = tf.py_function(_log_id, [example_id], tf.string)
  with tf.control_dependencies([logged]):
    return {'inputs': tf.identity(inputs), 'targets': targets}


if 'sharded_sentiment' not in seqio.TaskRegistry.names():
  directory = os.environ.get('SHARDED_TASK_DIR', '/nonexistent')
  seqio.TaskRegistry.add(
      'sharded_sentiment',
      # Reading order: one line from each file in turn, as the examples were numbered.
      source=seqio.TextLineDataSource(
          {split: os.path.join(directory, f'{split}*.tsv') for split in ('train', 'validation')},
          cycle_length=2, block_length=1),
      preprocessors=[parse_line, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={name: seqio.Feature(seqio.SentencePieceVocabulary(VOCAB_PATH), add_eos=True)
                       for name in ('inputs', 'targets')},
      metric_fns=[tiny_task.accuracy])
