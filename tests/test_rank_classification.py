"""Rank classification: the evaluator scores every label word and predicts the best one."""

import json

import jax
import jax.numpy as jnp
import pytest

from paths import VOCAB_PATH
from prompt_tuning.inference import evaluation
from prompt_tuning.model import models
from prompt_tuning.training import partitioning
from tasks import user_task

# (input, target); a label's score is how often its token occurs in the input, so the last
# example is ranked 'yes' (2) over its target 'no' (1).
EXAMPLES = [('the answer is yes', 'yes'), ('surely no', 'no'), ('maybe so', 'maybe'),
            ('yes yes no', 'no')]


class KnownScores(models.EncoderDecoderModel):
  """A model whose score for (input, label) is the count of the label's first token in the
  input, and whose decoding always yields the empty text (batches as a T5's)."""

  def __init__(self):
    super().__init__(module=None)

  def score_batch(self, params, batch):
    del params
    first_token = batch['decoder_target_tokens'][:, :1]
    return (batch['encoder_input_tokens'] == first_token).sum(axis=1).astype(jnp.float32)

  def predict_batch(self, params, batch, max_decode_length=None):
    del params, max_decode_length
    return jnp.zeros_like(batch['decoder_target_tokens']), None


@pytest.fixture(scope='module')
def task_name(tmp_path_factory):
  path = tmp_path_factory.mktemp('rank') / 'examples.jsonl'
  path.write_text(''.join(json.dumps({'text': text, 'answer': answer}) + '\n'
                          for text, answer in EXAMPLES))
  user_task.register_file_task('rank_test', str(path), str(path), 'text', 'answer',
                               VOCAB_PATH, label_words=['yes', 'no', 'maybe'])
  return 'rank_test'


def _evaluator(task_name, targets_length=4):
  config = evaluation.EvalConfig(task_name, {'inputs': 8, 'targets': targets_length},
                                 batch_size=4)
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  return evaluation.Evaluator(config, KnownScores(), partitioning.batch_sharding(mesh))


def test_rank_classification_predicts_the_highest_scoring_label(task_name):
  evaluator = _evaluator(task_name)
  task = evaluator.evaluator.eval_tasks[0]
  assert evaluator.rank_predictions(task, {}, {}) == ['yes', 'no', 'maybe', 'yes']
  metrics = evaluator.evaluate({}, {}, step=0)
  assert metrics == {'rank_test/accuracy': 0.0, 'rank_test/rank_accuracy': 75.0}


def test_a_label_longer_than_the_targets_is_a_clear_error(task_name):
  message = r"label 'yes' .* is 2 tokens but TASK_FEATURE_LENGTHS\['targets'\] is 1"
  with pytest.raises(ValueError, match=message):
    _evaluator(task_name, targets_length=1).evaluate({}, {}, step=0)
