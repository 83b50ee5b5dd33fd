"""Your own task from files: `register_file_task` turns a TSV or JSONL file per split into a
seqio task (text in, text out), optionally a classification task with label words.

In your own module, e.g. `my_tasks.py` on PYTHONPATH:

    from tasks import user_task

    user_task.register_file_task(
        'my_sentiment', train_path='/data/train.tsv', validation_path='/data/dev.tsv',
        input_field='sentence', target_field='label', label_words=['negative', 'positive'],
        vocabulary_path='/models/sentencepiece.model')

and run with `--gin.MIXTURE_OR_TASK_NAME="'my_sentiment'"
--gin.MIXTURE_OR_TASK_MODULE="'my_tasks'"`.
"""

import csv
import json
import os
from typing import Callable, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.formats import hf_vocabulary
from prompt_tuning.inference import labels
from tasks import metrics

MetricFn = Callable[[Sequence, Sequence], dict[str, float]]


def _read_records(path: str) -> list[dict]:
  """The rows of a TSV file with a header row (`.tsv`) or the objects of a JSONL file."""
  if not os.path.isfile(path):
    raise ValueError(f'task file {path} does not exist; check the path given to '
                     'register_file_task.')
  with open(path, encoding='utf-8', newline='') as f:
    if path.endswith('.tsv'):
      return list(csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
    if path.endswith('.jsonl'):
      return [json.loads(line) for line in f if line.strip()]
  raise ValueError(f'task file {path} must end in .tsv (with a header row) or .jsonl.')


def read_examples(path: str, input_field: str, target_field: str,
                  label_words: Optional[Sequence[str]] = None) -> dict[str, list[str]]:
  """{'inputs': [...], 'targets': [...]} texts from the named fields of every record."""
  records = _read_records(path)
  if not records:
    raise ValueError(f'task file {path} has no examples.')
  inputs, targets = [], []
  for number, record in enumerate(records, start=1):
    for field in (input_field, target_field):
      if record.get(field) is None:
        raise ValueError(f'record {number} of {path} has no field {field!r} (fields: '
                         f'{sorted(record)}); fix input_field / target_field.')
    target = str(record[target_field])
    if label_words and target not in label_words:
      raise ValueError(f'record {number} of {path}: target {target!r} is not one of the label '
                       f'words {list(label_words)}.')
    inputs.append(str(record[input_field]))
    targets.append(target)
  return {'inputs': inputs, 'targets': targets}


def register_file_task(name: str, train_path: str, validation_path: str, input_field: str,
                       target_field: str, vocabulary_path: str,
                       label_words: Optional[Sequence[str]] = None,
                       metric_fns: Sequence[MetricFn] = (metrics.accuracy,)) -> seqio.Task:
  """Registers (or replaces) seqio task `name` with `train` and `validation` splits.

  Args:
    name: the task name, MIXTURE_OR_TASK_NAME.
    train_path, validation_path: `.tsv` (tab-separated, header row) or `.jsonl` files.
    input_field, target_field: the columns (keys) holding the input and target texts.
    vocabulary_path: the model's SentencePiece model (e.g. T5's `sentencepiece.model`), or
      a Hugging Face model directory (decoder-only models): its `tokenizer.json`, inputs
      with the tokenizer's BOS and no EOS, targets with its EOS (`hf_vocabulary`).
    label_words: for a classification task, every target text it may have; registered
      with `labels.register_labels`, so runs also rank-classify and class-label
      initialisation needs no CLASS_LABELS. Every target is checked against them.
    metric_fns: `fn(targets, predictions) -> {name: value}` on the target texts.
  """
  splits = {split: read_examples(path, input_field, target_field, label_words)
            for split, path in (('train', train_path), ('validation', validation_path))}

  def source(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(splits[split])

  if hf_vocabulary.is_hf_directory(vocabulary_path):
    output_features = {
        'inputs': seqio.Feature(hf_vocabulary.HfVocabulary(vocabulary_path, add_bos=True),
                                add_eos=False),
        'targets': seqio.Feature(hf_vocabulary.HfVocabulary(vocabulary_path), add_eos=True)}
  elif os.path.isfile(vocabulary_path):
    vocabulary = seqio.SentencePieceVocabulary(vocabulary_path, extra_ids=100)  # As T5's.
    output_features = {feature: seqio.Feature(vocabulary, add_eos=True)
                       for feature in ('inputs', 'targets')}
  else:
    raise ValueError(f'vocabulary {vocabulary_path} does not exist; give register_file_task '
                     "the model's SentencePiece file or Hugging Face directory.")
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(source, splits=list(splits)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=output_features, metric_fns=list(metric_fns))
  if label_words:
    labels.register_labels(name, label_words)
  return task
