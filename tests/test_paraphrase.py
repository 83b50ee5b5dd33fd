"""Paraphrase transfer (QQP <-> MRPC): one format and one set of label words for both tasks,
and the gin bindings that train on one and evaluate on the other."""

import gin
import pytest
import seqio
import tensorflow_datasets as tfds

import test_glue  # First: it points T5_VOCABULARY_PATH at the test vocabulary.
from prompt_tuning import gin_config
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import labels
from prompt_tuning.training import data
from tasks import glue
from tasks import text_formats

TASKS = ('paraphrase_qqp', 'paraphrase_mrpc')


def test_qqp_and_mrpc_examples_read_alike():
  qqp = {'question1': 'How do I cook?', 'question2': 'How can I cook?', 'label': 1, 'idx': 0}
  mrpc = {'sentence1': 'He left.', 'sentence2': 'He went away.', 'label': 0, 'idx': 1}
  formatted = [
      test_glue.format_one(text_formats.labelled_fields(None, glue.PARAPHRASE[name][1],
                                                        glue.PARAPHRASE_LABELS), example)[0]
      for name, example in zip(TASKS, (qqp, mrpc))]
  assert formatted == [
      {'inputs': 'sentence1: How do I cook? sentence2: How can I cook?',
       'targets': 'equivalent', 'idx': 0},
      {'inputs': 'sentence1: He left. sentence2: He went away.', 'targets': 'not_equivalent',
       'idx': 1}]


@pytest.mark.parametrize('name', TASKS)
def test_both_tasks_share_format_label_words_and_metrics(name):
  task = seqio.get_mixture_or_task(name)
  assert labels.labels_of(name) == ('not_equivalent', 'equivalent')
  assert [fn.__name__ for fn in task.predict_metric_fns] == ['f1', 'accuracy']
  with tfds.testing.mock_data(num_examples=4):
    examples = list(task.get_dataset(None, split='validation', shuffle=False)
                    .as_numpy_iterator())
  for example in examples:
    inputs = example['inputs_pretokenized'].decode()
    assert inputs.startswith('sentence1: ') and ' sentence2: ' in inputs
    assert example['targets_pretokenized'].decode() in glue.PARAPHRASE_LABELS


def test_train_on_qqp_and_evaluate_on_mrpc_with_one_binding():
  gin_config.parse(
      ['models/t5_1_1_tiny.gin', 'prompts/class_labels.gin', 'runs/prompt_finetune.gin'],
      ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'paraphrase_qqp'",
       "MIXTURE_OR_TASK_MODULE = 'tasks.glue'",
       "evaluation.EvalConfig.mixture_or_task_name = 'paraphrase_mrpc'"])
  try:
    assert data.DataConfig().mixture_or_task_name == 'paraphrase_qqp'
    assert evaluation.EvalConfig().mixture_or_task_name == 'paraphrase_mrpc'
    # Class-label initialisation reads the training task's labels, which are the same.
    assert labels.task_labels() == labels.labels_of('paraphrase_mrpc')
  finally:
    gin.clear_config()  # Leave no bindings to later tests.
