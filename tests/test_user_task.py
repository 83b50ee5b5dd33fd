"""A task registered from the user's own TSV / JSONL files, and a prompt trained on it
through the CLI with its label words read from the task."""

import os
import subprocess
import sys

import numpy as np
import pytest

from paths import VOCAB_PATH
import tiny_task  # pylint: disable=unused-import  # Registers `tiny_sentiment`.
from prompt_tuning.inference import labels
from tasks import user_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVIEWS = [(f'the film was {word}', label) for label, words in
           (('positive', ['good', 'great', 'lovely', 'fine']),
            ('negative', ['bad', 'awful', 'boring', 'poor'])) for word in words]
MY_TASKS = f"""
from tasks import user_task

user_task.register_file_task(
    'my_sentiment', train_path='{{tmp}}/train.tsv', validation_path='{{tmp}}/dev.tsv',
    input_field='sentence', target_field='label', label_words=['negative', 'positive'],
    vocabulary_path='{VOCAB_PATH}')
"""


def _write_tsv(path, rows, header='sentence\tlabel'):
  path.write_text('\n'.join([header] + ['\t'.join(row) for row in rows]) + '\n')


def test_tsv_and_jsonl_give_the_named_fields(tmp_path):
  _write_tsv(tmp_path / 'a.tsv', REVIEWS[:2])
  (tmp_path / 'a.jsonl').write_text('{"sentence": "so \\"good\\"", "label": "positive"}\n')
  assert user_task.read_examples(str(tmp_path / 'a.tsv'), 'sentence', 'label') == {
      'inputs': ['the film was good', 'the film was great'],
      'targets': ['positive', 'positive']}
  assert user_task.read_examples(str(tmp_path / 'a.jsonl'), 'sentence', 'label') == {
      'inputs': ['so "good"'], 'targets': ['positive']}


@pytest.mark.parametrize('name,fields,label_words,message', [
    ('missing.tsv', ('sentence', 'label'), None, 'missing.tsv does not exist'),
    ('a.csv', ('sentence', 'label'), None, 'must end in .tsv'),
    ('a.tsv', ('text', 'label'), None, "record 1 of .* has no field 'text'"),
    ('a.tsv', ('sentence', 'label'), ['yes', 'no'],
     "target 'positive' is not one of the label words"),
])
def test_bad_files_and_fields_are_clear_errors(tmp_path, name, fields, label_words, message):
  _write_tsv(tmp_path / 'a.tsv', REVIEWS[:2])
  (tmp_path / 'a.csv').write_text('sentence,label\n')
  with pytest.raises(ValueError, match=message):
    user_task.read_examples(str(tmp_path / name), *fields, label_words)


def test_registration_declares_the_label_words(tmp_path):
  _write_tsv(tmp_path / 'train.tsv', REVIEWS)
  task = user_task.register_file_task('labelled', str(tmp_path / 'train.tsv'),
                                      str(tmp_path / 'train.tsv'), 'sentence', 'label',
                                      VOCAB_PATH, label_words=['negative', 'positive'])
  assert labels.task_labels('labelled') == ('negative', 'positive')
  assert labels.label_vocabulary(task_name='labelled').encode('positive') == [1465]
  example = next(task.get_dataset(None, split='validation', shuffle=False).as_numpy_iterator())
  assert example['targets_pretokenized'] == b'positive' and example['targets'][-1] == 1


def test_class_labels_of_a_task_without_label_words_is_a_clear_error():
  with pytest.raises(ValueError, match="task 'tiny_sentiment' has no registered label words"):
    labels.task_labels('tiny_sentiment')


def test_a_prompt_trains_on_a_user_tsv_through_the_cli(tmp_path):
  _write_tsv(tmp_path / 'train.tsv', REVIEWS * 2)
  _write_tsv(tmp_path / 'dev.tsv', REVIEWS)
  (tmp_path / 'my_tasks.py').write_text(MY_TASKS.format(tmp=tmp_path))
  model_dir = tmp_path / 'run'
  command = [sys.executable, '-m', 'prompt_tuning.train', '--gin_file=models/t5_1_1_tiny.gin',
             '--gin_file=prompts/class_labels.gin', '--gin_file=runs/prompt_finetune.gin',
             f"--gin.MODEL_DIR='{model_dir}'", "--gin.MIXTURE_OR_TASK_NAME='my_sentiment'",
             "--gin.MIXTURE_OR_TASK_MODULE='my_tasks'",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}", '--gin.BATCH_SIZE=8',
             '--gin.EVAL_BATCH_SIZE=8', '--gin.PROMPT_LENGTH=4', '--gin.TRAIN_STEPS=2',
             '--gin.EVAL_PERIOD=0']
  env = {**os.environ, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}', 'XLA_FLAGS': '',
         'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert np.load(model_dir / 'prompt.npy').shape == (4, 32)
  assert 'my_sentiment/accuracy: ' in result.stdout
  assert 'my_sentiment/rank_accuracy: ' in result.stdout
