"""A new user's mistakes, through the real entry points (in this process, 8 CPU devices):
each gets one line on stderr naming the fix and a failing exit, and a refused run leaves
MODEL_DIR byte-for-byte as it was."""

import hashlib
import os
import re
import shutil

import gin
import jax
import numpy as np
import pytest

import cli
from prompt_tuning import export
from prompt_tuning import gin_config
from prompt_tuning.inference import prompt_bank
from prompt_tuning.model import models
from prompt_tuning.training import checkpoints


SHORT_RUN = ('--gin.TRAIN_STEPS=4', '--gin.CHECKPOINT_PERIOD=2', '--gin.EVAL_PERIOD=0',
             '--gin.DROPOUT_RATE=0.0')


def snapshot(model_dir) -> dict[str, str]:
  """Every file and folder under `model_dir` with a hash of its bytes ({} if absent)."""
  found = {}
  for root, folders, files in os.walk(model_dir):
    for name in folders:
      found[os.path.relpath(os.path.join(root, name), model_dir) + '/'] = ''
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, model_dir)] = hashlib.sha256(f.read()).hexdigest()
  return found


def assert_one_clear_line(result: cli.Result, message: str) -> None:
  """Exit 1, and stderr's only error line names the fix: no traceback, no gin context."""
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert result.returncode == 1, result.stderr[-2000:]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and 'In call to configurable' not in result.stderr


def saved_prompt(model_dir, step: int) -> np.ndarray:
  return np.asarray(prompt_bank.run_prompt(str(model_dir), step))


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 4-step run (checkpoints at 2 and 4), never changed by the tests that use it."""
  model_dir = tmp_path_factory.mktemp('trained')
  result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'", *SHORT_RUN)
  assert result.returncode == 0, result.stderr[-2000:]
  return model_dir


@pytest.fixture(scope='module')
def not_a_prompt(tmp_path_factory):
  path = tmp_path_factory.mktemp('files') / 'prompt.npy'
  path.write_text('0.1 0.2\n0.3 0.4\n')
  return path


FRESH_DIR_CASES = [
    ('misspelled macro', ['--gin.PROMT_LENGTH=5'], 'did you mean PROMPT_LENGTH?'),
    ('nan typed literally', ['--gin.LEARNING_RATE=nan'],
     "gin cannot read the binding 'LEARNING_RATE = nan'"),
    ('negative learning rate', ['--gin.LEARNING_RATE=-1.0'],
     'LEARNING_RATE=-1.0 must be a finite number >= 0'),
    ('lengths without targets', ["--gin.TASK_FEATURE_LENGTHS={'inputs': 16}"],
     "TASK_FEATURE_LENGTHS needs a positive length for 'targets'"),
    ('batch not divisible', ['--gin.BATCH_SIZE=12'],
     'BATCH_SIZE=12 does not split over the 8-way data parallelism'),
    ('negative prompt length', ['--gin.PROMPT_LENGTH=-3'], 'PROMPT_LENGTH=-3 must be'),
    ('unknown task', ["--gin.MIXTURE_OR_TASK_NAME='nope'"], "unknown task or mixture 'nope'"),
    ('zero eval batch', ['--gin.EVAL_BATCH_SIZE=0'], 'EVAL_BATCH_SIZE=0 must be positive'),
    ('text file as .npy', ['--gin_file=prompts/from_file.gin', "--gin.PROMPT_FILE='{npy}'"],
     'is not a .npy array'),
    ('prompt flag to train', ['--prompt', 'a=/runs/a'],
     '--prompt is for evaluate, infer and interpret'),
]


@pytest.mark.parametrize('name,args,message', FRESH_DIR_CASES,
                         ids=[case[0] for case in FRESH_DIR_CASES])
def test_a_refused_run_creates_no_model_dir(tmp_path, not_a_prompt, name, args, message):
  del name
  model_dir = tmp_path / 'run'
  result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'", *SHORT_RUN,
                              *[arg.replace('{npy}', str(not_a_prompt)) for arg in args])
  assert_one_clear_line(result, message)
  assert not model_dir.exists()


def test_model_dir_below_a_file_is_refused(tmp_path):
  (tmp_path / 'file').write_text('')
  result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{tmp_path / 'file' / 'run'}'",
                              *SHORT_RUN)
  assert_one_clear_line(result, 'is a file, not a directory')


TRAINED_DIR_CASES = [
    ('train', None, ['--gin.PROMPT_LENGTH=6'], 'trainable shapes'),
    ('train', None, ['--gin.SEED=1'], 'trained on frozen weights'),
    ('train', None, ['--gin.TRAIN_STEPS=2'], 'already holds step 4, past TRAIN_STEPS=2'),
    ('train', None, ['--gin.BATCH_SIZE=10'], 'use 8 or 16'),
    ('evaluate', 'prompt_eval.gin', ['--gin.EVAL_BATCH_SIZE=7', '--gin.BATCH_SIZ=8'],
     'did you mean BATCH_SIZE or EVAL_BATCH_SIZE?'),
]


@pytest.mark.parametrize('module,run_file,args,message', TRAINED_DIR_CASES,
                         ids=[case[2][0] for case in TRAINED_DIR_CASES])
def test_a_refused_run_changes_nothing_in_an_existing_run(trained, module, run_file, args,
                                                          message):
  before = snapshot(trained)
  result = cli.run_in_process(module, run_file, f"--gin.MODEL_DIR='{trained}'", *SHORT_RUN,
                              *args)
  assert_one_clear_line(result, message)
  assert snapshot(trained) == before


def test_export_to_hugging_face_of_a_prompt_run_says_what_to_do(trained, tmp_path):
  result = cli.run_main_in_process(export.main, [
      '--format=hf', '--gin_file=models/t5_1_1_tiny.gin', f'--model_dir={trained}',
      f'--output={tmp_path / "hf"}'])
  assert_one_clear_line(result, 'is a prompt-tuning run: it trained a prompt, not the model '
                                'weights; export the prompt with --format=peft')
  assert not (tmp_path / 'hf').exists()


def test_a_finished_run_is_left_as_it_is(trained):
  before = snapshot(trained)
  result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{trained}'", *SHORT_RUN)
  assert result.returncode == 0
  assert 'already holds step 4 = TRAIN_STEPS: nothing to train' in result.stdout
  assert snapshot(trained) == before


def test_overflow_stops_the_run_and_writes_nothing_non_finite(tmp_path):
  """The float32 maximum as learning rate: the prompt overflows within a few steps."""
  result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{tmp_path}'", *SHORT_RUN,
                              '--gin.TRAIN_STEPS=8', '--gin.CHECKPOINT_PERIOD=1',
                              '--gin.DROPOUT_RATE=0.1', '--gin.LEARNING_RATE=3.4e38')
  stopped = re.search(r'at step (\d+)', result.stderr)
  assert stopped, result.stderr[-2000:]
  bad_step = int(stopped[1])
  assert_one_clear_line(result, f'at step {bad_step}: training stopped and the newest '
                                f'checkpoint (step {bad_step - 1}) is kept; lower LEARNING_RATE')
  assert not (tmp_path / 'prompt.npy').exists()
  assert checkpoints.RunCheckpoints(str(tmp_path)).latest_step() == bad_step - 1
  for step in range(1, bad_step):
    assert np.isfinite(saved_prompt(tmp_path, step)).all()


@pytest.mark.parametrize('module,run_file', [('evaluate', 'prompt_eval.gin'),
                                             ('infer', 'prompt_infer.gin')])
def test_evaluate_and_infer_refuse_a_model_dir_without_a_trained_prompt(tmp_path, module,
                                                                         run_file):
  missing = tmp_path / 'typo'
  result = cli.run_in_process(module, run_file, f"--gin.MODEL_DIR='{missing}'")
  assert_one_clear_line(result, 'has no checkpoint, so no trained prompt')
  assert not missing.exists()
  allowed = cli.run_in_process(module, run_file, f"--gin.MODEL_DIR='{missing}'",
                               '--gin.USE_INITIAL_PROMPT=True')
  assert allowed.returncode == 0, allowed.stderr[-2000:]
  assert 'using the initial prompt (step 0, untrained' in allowed.stdout


def test_evaluate_says_which_step_it_uses(trained, tmp_path):
  model_dir = tmp_path / 'copy'
  shutil.copytree(trained, model_dir)
  result = cli.run_in_process('evaluate', 'prompt_eval.gin', f"--gin.MODEL_DIR='{model_dir}'",
                              '--gin.EVAL_BATCH_SIZE=12')  # Padded to 16 rows on 8 devices.
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'using step 4 of {model_dir}' in result.stdout
  padded = (model_dir / 'eval' / 'metrics_4.json').read_text()
  cli.run_in_process('evaluate', 'prompt_eval.gin', f"--gin.MODEL_DIR='{model_dir}'",
                     '--gin.EVAL_BATCH_SIZE=16')
  assert (model_dir / 'eval' / 'metrics_4.json').read_text() == padded


def test_a_changed_learning_rate_is_applied_and_recorded(trained, tmp_path):
  model_dir = tmp_path / 'resumed'
  shutil.copytree(trained, model_dir)
  first_config = (model_dir / 'config.gin').read_text()
  result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'", *SHORT_RUN,
                              '--gin.TRAIN_STEPS=6', '--gin.LEARNING_RATE=0.0',
                              '--gin.trainer.adafactor.weight_decay_rate=0.0')
  assert result.returncode == 0, result.stderr[-2000:]
  assert ('configuration changed since step 4 (the previous one is kept as config-4.gin): '
          'LEARNING_RATE: 0.3 → 0.0;') in result.stdout
  assert 'TRAIN_STEPS: 4 → 6' in result.stdout
  assert 'adafactor.weight_decay_rate: 1e-05 → 0.0' in result.stdout
  assert (model_dir / 'config-4.gin').read_text() == first_config
  # With a learning rate (and weight decay) of 0 the prompt stays where step 4 left it.
  np.testing.assert_array_equal(np.load(model_dir / 'prompt.npy'), saved_prompt(trained, 4))


def test_frozen_weights_are_matched_by_fingerprint_not_path(tmp_path):
  gin_config.parse(['models/t5_1_1_tiny.gin', 'runs/prompt_finetune.gin'],
                   ["MODEL_DIR = '/unused'", "MIXTURE_OR_TASK_NAME = 'unused'"])
  model = models.build_model()
  shapes = models.EncoderDecoderModel.batch_shapes({'inputs': 16, 'targets': 4}, 8)
  params = model.init(jax.random.PRNGKey(3),
                      {k: np.zeros(v.shape, v.dtype) for k, v in shapes.items()})
  checkpoints.save_params(str(tmp_path / 'weights'), params)
  shutil.copytree(tmp_path / 'weights', tmp_path / 'copied_weights')
  run = lambda weights, steps: cli.run_in_process(
      'train', None, f"--gin.MODEL_DIR='{tmp_path / 'run'}'", *SHORT_RUN,
      f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / weights}'", f'--gin.TRAIN_STEPS={steps}')
  assert run('weights', 2).returncode == 0
  resumed = run('copied_weights', 4)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'done: steps 2 → 4' in resumed.stdout


def test_the_demo_runs_on_8_devices(tmp_path):
  """EVAL_BATCH_SIZE 100 does not split 8 ways: the last rows are padding, not an error."""
  assert jax.device_count() == 8
  result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{tmp_path}'",
                              '--gin.TRAIN_STEPS=2', '--gin.EVAL_PERIOD=0',
                              base=['--gin_file=demo.gin'])
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'eval at step 2: demo_sentiment/accuracy' in result.stdout
