"""The demo: its generated corpus and tasks, the pretraining objectives, the shipped model's
integrity checks, demo.gin's class labels (from the task), the pretraining recipe and the demo
run through the real CLI."""

import os
import shutil
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
import seqio

import cli
from paths import VOCAB_PATH
from prompt_tuning import demo_model
from prompt_tuning import gin_config
from prompt_tuning.inference import labels
from prompt_tuning.model import initializers
from tasks import preprocessors
from tasks import synthetic_reviews

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reviews_are_deterministic_balanced_and_follow_the_grammar():
  pairs = synthetic_reviews.labelled_reviews(seed=0, count=400)
  assert pairs == synthetic_reviews.labelled_reviews(seed=0, count=400)
  assert 0.4 < np.mean([label == 'positive' for _, label in pairs]) < 0.6
  for text, label in pairs[:50]:
    words = set(text.replace(' .', '').split())
    wanted, unwanted = ((synthetic_reviews.POSITIVE, synthetic_reviews.NEGATIVE)
                        if label == 'positive' else
                        (synthetic_reviews.NEGATIVE, synthetic_reviews.POSITIVE))
    assert words & set(wanted) and not words & set(unwanted), text


def test_span_corruption_hides_spans_behind_descending_sentinels():
  tokens = np.arange(3, 43, dtype=np.int32)  # 40 tokens, none a sentinel.
  inputs, targets = preprocessors.corrupt_spans(tokens, np.array([7, 0]), vocab_size=200)
  sentinels = [t for t in targets if t >= 150]
  assert sentinels == list(range(199, 199 - len(sentinels), -1))
  assert [t for t in inputs if t >= 150] == sentinels[:-1]
  assert len(tokens) - sum(t < 150 for t in inputs) == 6  # 15% of 40 tokens hidden.
  # Putting each span back where its sentinel stands restores the document.
  spans, current = {}, None
  for t in targets:
    if t >= 150:
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  restored = [x for t in inputs for x in (spans[int(t)] if t >= 150 else [int(t)])]
  assert restored == tokens.tolist()


def _copy_assets(tmp_path):
  directory = tmp_path / 'demo'
  shutil.copytree(demo_model.ASSETS, directory)
  return directory


def test_shipped_model_is_verified_before_use(tmp_path):
  directory = _copy_assets(tmp_path)
  assert demo_model.verified_params_path(str(directory)) == str(directory / 'params')
  params_files = sorted(p for p in (directory / 'params').rglob('*') if p.is_file())
  victim = max(params_files, key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[:-1] + b'!')
  with pytest.raises(ValueError, match='is corrupted'):
    demo_model.verified_params_path(str(directory))
  victim.unlink()
  with pytest.raises(FileNotFoundError, match='is missing'):
    demo_model.verified_params_path(str(directory))
  (directory / 'MANIFEST.json').unlink()
  with pytest.raises(FileNotFoundError, match='MANIFEST.json'):
    demo_model.verified_params_path(str(directory))


def test_shipped_assets_fit_the_budget():
  size = sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(demo_model.ASSETS) for name in names)
  assert size < 20e6


def _demo_prompt(*bindings: str) -> np.ndarray:
  """The class-label prompt demo.gin (plus `bindings`) initialises, on a [V, 8] table of
  row numbers: each label row is the mean id of its tokens."""
  gin_config.parse(['demo.gin'], bindings)
  try:
    init = initializers.class_labels()
  finally:
    gin.clear_config()
  embeddings = np.repeat(np.arange(40_000, dtype=np.float32)[:, None], 8, axis=1)
  return np.asarray(init(jax.random.PRNGKey(0), (10, 8), embeddings))


def _mean_ids(words, vocabulary) -> list[float]:
  return [float(np.mean(vocabulary.encode(word))) for word in words]


@pytest.fixture(scope='module')
def labelled_task():
  """A task with other label words than the demo's, in another vocabulary (tests' T5)."""
  import tiny_task  # pylint: disable=g-import-not-at-top
  if 'tiny_sentiment_labelled' not in seqio.TaskRegistry.names():
    source = seqio.get_mixture_or_task('tiny_sentiment')
    seqio.TaskRegistry.add('tiny_sentiment_labelled', source=source.source,
                           preprocessors=source.preprocessors,
                           output_features=source.output_features, metric_fns=[])
    labels.register_labels('tiny_sentiment_labelled', ['bad', 'good', 'so-so'])
  return tiny_task.vocabulary


def test_demo_class_labels_come_from_the_task(labelled_task):
  default = _demo_prompt()  # Also imports tasks.demo, as demo.gin says.
  demo_vocabulary = seqio.get_mixture_or_task('demo_sentiment').output_features[
      'targets'].vocabulary
  assert default[:2, 0].tolist() == _mean_ids(['negative', 'positive'], demo_vocabulary)
  assert default[:2, 0].tolist() == _mean_ids(
      ['negative', 'positive'], initializers.sentencepiece_vocabulary(demo_model.VOCABULARY_PATH))
  np.testing.assert_array_equal(_demo_prompt('CLASS_LABELS = None'), default)
  other = _demo_prompt("MIXTURE_OR_TASK_NAME = 'tiny_sentiment_labelled'",
                       "MIXTURE_OR_TASK_MODULE = 'tiny_task'")
  assert other[:3, 0].tolist() == _mean_ids(['bad', 'good', 'so-so'], labelled_task)
  pinned = _demo_prompt("CLASS_LABELS = ['great', 'awful']")
  assert pinned[:2, 0].tolist() == _mean_ids(['great', 'awful'], demo_vocabulary)
  # VOCABULARY_PATH is honoured, though demo.gin imports demo_model (no gin constant shadows it).
  t5 = _demo_prompt(f"VOCABULARY_PATH = '{VOCAB_PATH}'")
  assert t5[:2, 0].tolist() == _mean_ids(['negative', 'positive'], labelled_task)


def test_demo_on_a_task_without_label_words_is_one_clear_line(tmp_path):
  for extra in ([], ['--gin.CLASS_LABELS=None']):
    result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{tmp_path}'",
                                "--gin.MIXTURE_OR_TASK_NAME='tiny_sentiment'",
                                "--gin.MIXTURE_OR_TASK_MODULE='tiny_task'", *extra,
                                base=['--gin_file=demo.gin'])
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
    assert "task 'tiny_sentiment' has no registered label words" in errors[0]
    assert '--gin.CLASS_LABELS=' in errors[0] and 'Traceback' not in result.stderr
    assert os.listdir(tmp_path) == []
  gin.clear_config()


def test_a_malformed_class_labels_binding_is_a_clear_error():
  with pytest.raises(ValueError, match='CLASS_LABELS must be a non-empty list of label words'):
    labels.task_labels('demo_sentiment', labels='positive')


def _run(command, **kwargs):
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900, **kwargs)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_demo_runs_through_the_cli(tmp_path):
  stdout = _run([sys.executable, '-m', 'prompt_tuning.train', '--gin_file=demo.gin',
                 f"--gin.MODEL_DIR='{tmp_path}'", '--gin.TRAIN_STEPS=3',
                 '--gin.EVAL_PERIOD=0', '--gin.CHECKPOINT_PERIOD=3'])
  assert 'demo_sentiment/accuracy: ' in stdout
  assert ': unchanged' in stdout, stdout
  assert np.load(tmp_path / 'prompt.npy').shape == (10, 128)
  assert (tmp_path / 'learning_curve.png').exists()
  assert os.listdir(tmp_path / 'checkpoints') == ['3']


def test_pretraining_recipe_runs_a_few_steps(tmp_path):
  _run(['bash', 'recipes/pretrain_demo_model.sh', str(tmp_path), '2', '2', '0'])
  assert (tmp_path / 'span_corruption' / 'params').is_dir()
  assert (tmp_path / 'prefix_lm' / 'params').is_dir()
