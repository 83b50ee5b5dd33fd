"""MRQA 2019 (Fisch et al.) from its published JSONL files: SQuAD to train on and six
out-of-domain evaluation sets, the domain transfer of the prompt-tuning paper (Table 1).

Put the files as MRQA publishes them (`.jsonl.gz`; unzipped `.jsonl` works too) in the
directory named by the environment variable MRQA_DATA_DIR, read when a dataset is read:

  $MRQA_DATA_DIR/train/SQuAD.jsonl.gz                 mrqa_squad, split train
  $MRQA_DATA_DIR/dev/SQuAD.jsonl.gz                   mrqa_squad, split validation
  $MRQA_DATA_DIR/dev/TextbookQA.jsonl.gz              mrqa_textbookqa
  $MRQA_DATA_DIR/dev/BioASQ.jsonl.gz                  mrqa_bioasq
  $MRQA_DATA_DIR/dev/RACE.jsonl.gz                    mrqa_race
  $MRQA_DATA_DIR/dev/RelationExtraction.jsonl.gz      mrqa_relation_extraction
  $MRQA_DATA_DIR/dev/DuoRC.ParaphraseRC.jsonl.gz      mrqa_duorc
  $MRQA_DATA_DIR/dev/DROP.jsonl.gz                    mrqa_drop

Each question is one example, in T5's SQuAD format:

  inputs  'question: <question> context: <context>'
  targets the question's first answer

Metrics: SQuAD's exact match and F1 (x100), each against the best of all the question's
answers. The out-of-domain tasks have only a validation split; the mixture
`mrqa_out_of_domain` evaluates all six. Vocabulary: see `tasks/tfds_tasks.py`.
"""

import gzip
import json
import os
from typing import Iterator, Sequence

import seqio
import tensorflow as tf

from tasks import metrics
from tasks import postprocessors
from tasks import text_formats
from tasks import tfds_tasks

DATA_DIR_VARIABLE = 'MRQA_DATA_DIR'
SPLIT_FOLDERS = {'train': 'train', 'validation': 'dev'}
SQUAD_FILE = 'SQuAD'
# Task name suffix: the MRQA file name (without `.jsonl.gz`) of the dev set.
OUT_OF_DOMAIN = {'textbookqa': 'TextbookQA', 'bioasq': 'BioASQ', 'race': 'RACE',
                 'relation_extraction': 'RelationExtraction', 'duorc': 'DuoRC.ParaphraseRC',
                 'drop': 'DROP'}
MIXTURE = 'mrqa_out_of_domain'
FEATURES = {'question': tf.TensorSpec([], tf.string), 'context': tf.TensorSpec([], tf.string),
            'answers': tf.TensorSpec([None], tf.string)}


class MissingMrqaDataError(FileNotFoundError):
  """An MRQA file is not where MRQA_DATA_DIR says it is."""


def task_name(name: str) -> str:
  """'squad' -> 'mrqa_squad'."""
  return f'mrqa_{name}'


def task_names() -> list[str]:
  """Every MRQA task this module registers (the mixture aside)."""
  return [task_name(name) for name in ('squad', *OUT_OF_DOMAIN)]


def data_path(file_name: str, split: str) -> str:
  """The file holding `split` ('train' or 'validation') of MRQA's `file_name` (e.g. 'SQuAD'),
  gzipped or not, under MRQA_DATA_DIR; a one-line error when it is not there."""
  directory = os.environ.get(DATA_DIR_VARIABLE)
  if not directory:
    raise MissingMrqaDataError(
        f'{DATA_DIR_VARIABLE} is not set; set it to the directory holding the MRQA files '
        f'(train/{SQUAD_FILE}.jsonl.gz, dev/<name>.jsonl.gz; see tasks/mrqa.py).')
  path = os.path.join(directory, SPLIT_FOLDERS[split], f'{file_name}.jsonl.gz')
  for candidate in (path, path[:-len('.gz')]):
    if tf.io.gfile.exists(candidate):
      return candidate
  raise MissingMrqaDataError(
      f'MRQA file {path} not found ({DATA_DIR_VARIABLE}={directory}); put the published '
      f'{file_name}.jsonl.gz (or unzipped .jsonl) there.')


def read_questions(path: str) -> Iterator[dict]:
  """{'question', 'context', 'answers'} for each question of an MRQA JSONL(.gz) file; the
  header line is skipped."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    lines = gzip.GzipFile(fileobj=f) if path.endswith('.gz') else f
    for line in lines:
      if not line.strip():
        continue
      record = json.loads(line)
      if 'header' in record:
        continue
      for qa in record['qas']:
        yield {'question': qa['question'], 'context': record['context'],
               'answers': qa['answers']}


def _source(file_name: str, splits: Sequence[str]) -> seqio.FunctionDataSource:
  """Questions of MRQA's `file_name`, read from its file when a dataset is made."""

  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # One file per split; seqio shuffles the examples.
    path = data_path(file_name, split)
    return tf.data.Dataset.from_generator(lambda: read_questions(path),
                                          output_signature=FEATURES)

  return seqio.FunctionDataSource(dataset_fn, splits=list(splits))


def _register():
  datasets = [('squad', SQUAD_FILE, ('train', 'validation'))]
  datasets += [(name, file_name, ('validation',)) for name, file_name in OUT_OF_DOMAIN.items()]
  for name, file_name, splits in datasets:
    tfds_tasks.add_text_task(task_name(name), _source(file_name, splits), text_formats.squad,
                             postprocessors.answers, (metrics.squad,))
  seqio.MixtureRegistry.add(MIXTURE, [task_name(name) for name in OUT_OF_DOMAIN],
                            default_rate=1.0)


if task_name('squad') not in seqio.TaskRegistry.names():
  _register()
