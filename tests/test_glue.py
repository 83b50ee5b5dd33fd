"""GLUE tasks: T5's text formats on handwritten examples, batches from mock TFDS data, and
the one-line error for data that is not there."""

import os
import re

from absl import flags
from absl.testing import flagsaver
import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from paths import VOCAB_PATH

os.environ['T5_VOCABULARY_PATH'] = VOCAB_PATH
from prompt_tuning import gin_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from tasks import glue  # pylint: disable=g-import-not-at-top,wrong-import-position
from tasks import postprocessors  # pylint: disable=g-import-not-at-top,wrong-import-position
from tasks import text_formats  # pylint: disable=g-import-not-at-top,wrong-import-position
from tasks import tfds_tasks  # pylint: disable=g-import-not-at-top,wrong-import-position

LENGTHS = {'inputs': 32, 'targets': 8}


def format_one(preprocessor, example: dict) -> list[dict]:
  """Runs a text preprocessor on one example; its string features decoded."""
  dataset = preprocessor(tf.data.Dataset.from_tensors(example))
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}
          for ex in dataset.as_numpy_iterator()]


def one_batch(task_name: str, split: str) -> dict:
  """A batch of 2 model features from 4 mock TFDS examples."""
  with tfds.testing.mock_data(num_examples=4):
    dataset = seqio.get_mixture_or_task(task_name).get_dataset(
        LENGTHS, split=split, shuffle=False)
    converted = seqio.EncDecFeatureConverter(pack=False)(dataset, LENGTHS)
    return next(converted.batch(2).as_numpy_iterator())


def check_batch(batch: dict) -> None:
  assert batch['encoder_input_tokens'].shape == (2, LENGTHS['inputs'])
  assert batch['decoder_target_tokens'].shape == (2, LENGTHS['targets'])
  assert (batch['decoder_target_tokens'] > 0).any(axis=1).all()


@pytest.mark.parametrize('name', glue.task_names())
def test_every_task_makes_batches(name):
  check_batch(one_batch(name, seqio.get_mixture_or_task(name).splits[0]))


def test_labelled_fields_format_as_t5():
  example = {'sentence1': 'A cat sat.', 'sentence2': 'An animal sat.', 'label': 0, 'idx': 7}
  preprocessor = text_formats.labelled_fields('rte', glue.SENTENCES,
                                              ('entailment', 'not_entailment'))
  assert format_one(preprocessor, example) == [{
      'inputs': 'rte sentence1: A cat sat. sentence2: An animal sat.',
      'targets': 'entailment', 'idx': 7}]
  taskless = text_formats.labelled_fields(None, glue.NLI, ('e', 'n', 'c'))
  nli = {'premise': 'P.', 'hypothesis': 'H.', 'label': -1, 'idx': 0}
  assert format_one(taskless, nli)[0]['inputs'] == 'hypothesis: H. premise: P.'
  assert format_one(taskless, nli)[0]['targets'] == '<unk>'


def test_every_glue_format_names_its_fields_in_t5_order():
  expected = {
      'cola': 'cola sentence: S1', 'sst2': 'sst2 sentence: S1',
      'mrpc': 'mrpc sentence1: S1 sentence2: S2', 'qqp': 'qqp question1: Q1 question2: Q2',
      'mnli': 'mnli hypothesis: H premise: P', 'qnli': 'qnli question: Q1 sentence: S1',
      'rte': 'rte sentence1: S1 sentence2: S2', 'wnli': 'wnli sentence1: S1 sentence2: S2',
      'ax': 'mnli hypothesis: H premise: P'}
  example = {'sentence': 'S1', 'sentence1': 'S1', 'sentence2': 'S2', 'question': 'Q1',
             'question1': 'Q1', 'question2': 'Q2', 'hypothesis': 'H', 'premise': 'P',
             'label': 1, 'idx': 0}
  for config, inputs in expected.items():
    prefix, fields, labels, _, _ = glue.TASKS[config]
    [formatted] = format_one(text_formats.labelled_fields(prefix, fields, labels), example)
    assert formatted['inputs'] == inputs
    assert formatted['targets'] == labels[1]


def test_stsb_rounds_the_score_to_a_fifth_and_parses_it_back():
  example = {'sentence1': 'A.', 'sentence2': 'B.', 'label': np.float32(3.47), 'idx': 1}
  [formatted] = format_one(text_formats.stsb('stsb'), example)
  assert formatted['inputs'] == 'stsb sentence1: A. sentence2: B.'
  assert formatted['targets'] == '3.4'
  assert postprocessors.to_float(b'3.4') == 3.4
  assert postprocessors.to_float('three') == -1.0


def test_label_postprocessor_maps_unknown_text_to_minus_one():
  to_id = postprocessors.label_to_id(('entailment', 'not_entailment'))
  assert [to_id(b'not_entailment'), to_id('entailment'), to_id('maybe')] == [1, 0, -1]


def test_missing_data_is_a_one_line_error_naming_the_flag(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  source = tfds_tasks.PreparedTfdsSource('glue/rte:2.0.0', ['train'])
  with pytest.raises(tfds_tasks.MissingTfdsDataError) as error:
    source.get_dataset('train')
  message = str(error.value)
  assert message == (f'TFDS dataset glue/rte:2.0.0 not found in {tmp_path}; download/prepare '
                     'it and pass --tfds_data_dir=DIR (or set TFDS_DATA_DIR).')
  assert not list(tmp_path.iterdir())  # Nothing was downloaded or prepared.


def test_the_tfds_data_dir_flag_overrides_tfds_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'from_env'))
  monkeypatch.setattr(seqio.utils, '_TFDS_DATA_DIR_OVERRIDE', None)  # Restored afterwards.
  with flagsaver.flagsaver():
    flags.FLAGS(['test', f'--tfds_data_dir={tmp_path / "from_flag"}'])
    gin_config.parse_flags()
  gin.clear_config()  # parse_flags finalised an empty gin config.
  source = tfds_tasks.PreparedTfdsSource('glue/ax:2.0.0', ['test'])
  directory = re.escape(str(tmp_path / 'from_flag'))
  with pytest.raises(tfds_tasks.MissingTfdsDataError,
                     match=f'^TFDS dataset glue/ax:2.0.0 not found in {directory}; '):
    source.get_dataset('test')


def test_classification_tasks_register_their_label_words():
  from prompt_tuning.inference import labels  # pylint: disable=g-import-not-at-top
  assert labels.labels_of('glue_rte_v002') == ('entailment', 'not_entailment')
  assert labels.labels_of('glue_mnli_v002_taskless') == ('entailment', 'neutral', 'contradiction')
  assert labels.labels_of('glue_stsb_v002') is None  # Regression: no rank classification.
  assert labels.labels_of('glue_ax_v002') == ('entailment', 'neutral', 'contradiction')


def test_ax_is_the_mnli_formatted_diagnostic_set_scored_by_matthews_correlation():
  task = seqio.get_mixture_or_task('glue_ax_v002')
  assert task.splits == ('test',)
  assert [fn.__name__ for fn in task.predict_metric_fns] == ['matthews_corrcoef']
  example = {'premise': 'The cat sat.', 'hypothesis': 'A cat sat.', 'label': 2, 'idx': 5}
  prefix, fields, labels, _, _ = glue.TASKS['ax']
  assert format_one(text_formats.labelled_fields(prefix, fields, labels), example) == [{
      'inputs': 'mnli hypothesis: A cat sat. premise: The cat sat.',
      'targets': 'contradiction', 'idx': 5}]
