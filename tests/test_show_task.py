"""`python -m prompt_tuning.show_task`: a task's preprocessed examples, as text and ids."""

import os
import subprocess
import sys

import pytest

import tiny_task  # pylint: disable=unused-import  # Registers `tiny_sentiment`.
from prompt_tuning import show_task

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_prints_text_and_token_ids_of_the_first_examples():
  env = {**os.environ, 'PYTHONPATH': TESTS, 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(
      [sys.executable, '-m', 'prompt_tuning.show_task', 'tiny_sentiment', '--module=tiny_task',
       '--split=train', '--num_examples=2'], capture_output=True, text=True, env=env,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert [line for line in lines if line.startswith('example ')] == ['example 1:', 'example 2:']
  assert lines[3].startswith("  targets: '") and lines[3][12:-1] in ('positive', 'negative')
  assert lines[4].startswith('  targets ids (') and lines[4].endswith(', 1]')  # EOS last.
  assert lines[-1] == 'label words: none registered (no rank classification)'


def test_an_unknown_split_names_the_choices():
  with pytest.raises(ValueError, match="no split 'test'; choose one of train, validation"):
    show_task.describe('tiny_sentiment', split='test')
