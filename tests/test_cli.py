"""The train / evaluate / infer entry points, run as a user would: in subprocesses."""

import glob
import json
import os
import re

import numpy as np
import pytest

import cli


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('run')
  result = cli.run('train', None, f"--gin.MODEL_DIR='{model_dir}'",
                '--gin.TRAIN_STEPS=4', '--gin.CHECKPOINT_PERIOD=2', '--gin.EVAL_PERIOD=2',
                "--gin.BEST_METRIC='tiny_sentiment/accuracy'")
  return model_dir, result


def test_a_healthy_run_logs_no_errors(trained_run):
  """No error-level log lines (absl `E1202 ...`, `ERROR:...`) when all is well."""
  _, result = trained_run
  errors = [line for line in result.stderr.splitlines()
            if re.match(r'E\d{4} |ERROR:|error: ', line)]
  assert not errors, errors


def test_train_writes_checkpoints_logs_config_and_metrics(trained_run):
  model_dir, result = trained_run
  stdout = result.stdout
  assert sorted(os.listdir(model_dir / 'checkpoints')) == ['2', '4']
  assert len(os.listdir(model_dir / 'best')) == 1
  events = glob.glob(str(model_dir / 'train' / 'events.out.tfevents.*'))
  assert events
  scalars = open(events[0], 'rb').read()
  for name in (b'loss', b'accuracy', b'learning_rate', b'steps_per_s', b'examples_per_s'):
    assert name in scalars, name
  assert glob.glob(str(model_dir / 'eval' / 'events.out.tfevents.*'))
  assert "MODEL_DIR = '" in (model_dir / 'config.gin').read_text()
  assert 'RunSetup' in (model_dir / 'operative_config.gin').read_text()
  assert np.load(model_dir / 'prompt.npy').shape == (4, 32)
  for step in (0, 2, 4):
    assert f'eval at step {step}: tiny_sentiment/accuracy' in stdout
  assert 'tiny_sentiment/accuracy: ' in stdout
  assert 'frozen weights fingerprint' in stdout and ': unchanged' in stdout
  assert (model_dir / 'learning_curve.png').stat().st_size > 1000


def test_evaluate_and_infer_read_the_trained_run(trained_run):
  model_dir, _ = trained_run
  args = [f"--gin.MODEL_DIR='{model_dir}'"]
  cli.run('evaluate', 'prompt_eval.gin', *args)
  metrics = json.loads((model_dir / 'eval' / 'metrics_4.json').read_text())
  assert set(metrics) == {'tiny_sentiment/accuracy'}
  cli.run('infer', 'prompt_infer.gin', *args)
  lines = (model_dir / 'inference' / 'tiny_sentiment-validation-4.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert len(records) == 32
  assert set(records[0]) == {'task', 'inputs', 'targets', 'prediction'}
  assert records[0]['targets'] in ('positive', 'negative')


@pytest.mark.parametrize('args,message', [
    ([], 'error: required gin macro MODEL_DIR is not set'),
    (["--gin.MODEL_DIR='{tmp}'", '--gin.network.T5Config.emb_dimm=8'], 'emb_dimm'),
    (["--gin.MODEL_DIR='{tmp}'", "--gin.MIXTURE_OR_TASK_NAME='nope'"],
     "error: unknown task or mixture 'nope'"),
])
def test_bad_input_is_one_line_and_a_failing_exit(tmp_path, args, message):
  result = cli.run('train', None, *[a.format(tmp=tmp_path) for a in args],
                check=False)
  assert result.returncode == 1
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ') and message in last_line, result.stderr[-2000:]
