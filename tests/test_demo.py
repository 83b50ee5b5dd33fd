"""The demo: its generated corpus and tasks, the pretraining objectives, the shipped model's
integrity checks, the pretraining recipe and the demo run through the real CLI."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning import demo_model
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
