"""Training on a tiny seqio task: frozen weights untouched, loss falls, sharding and
resumption change nothing, bad input fails early with the checkpoint intact."""

import os

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from jax._src import array as jax_array

import tiny_task  # pylint: disable=unused-import  # Registers `tiny_sentiment`.
from prompt_tuning import gin_config
from prompt_tuning import train
from prompt_tuning.model import models
from prompt_tuning.training import checkpoints
from prompt_tuning.training import data
from prompt_tuning.training import partitioning
from prompt_tuning.training import runs

FEATURES = {'inputs': 16, 'targets': 4}


def _parse(model_dir, *extra):
  gin_config.parse(['models/t5_1_1_tiny.gin', 'prompts/sampled_vocab.gin',
                    'runs/prompt_finetune.gin'],
                   [f"MODEL_DIR = '{model_dir}'", "MIXTURE_OR_TASK_NAME = 'tiny_sentiment'",
                    f'TASK_FEATURE_LENGTHS = {FEATURES}', 'BATCH_SIZE = 8',
                    'PROMPT_LENGTH = 4', 'DROPOUT_RATE = 0.0', 'CHECKPOINT_PERIOD = 3',
                    'train.train.eval_data = None', *extra])


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _prepared(model_dir, mesh):
  _parse(model_dir)
  setup = runs.RunSetup()
  shapes = models.EncoderDecoderModel.batch_shapes(FEATURES, 8)
  return setup, runs.prepare(setup, shapes, checkpoints.CheckpointConfig(), mesh)


def _batches(count):
  config = data.DataConfig('tiny_sentiment', FEATURES, batch_size=8)
  iterator = data.host_batches(config, 0, 1)
  return [next(iterator) for _ in range(count)]


def _train(run, batches):
  """The losses of a step on each batch; every step runs the one program compiled first
  (the state's shardings out equal its shardings in)."""
  losses = []
  for batch in batches:
    run.state, metrics = run.steps.train_step(
        run.state, run.frozen, partitioning.host_batch_to_global(run.mesh, batch))
    losses.append(float(metrics['loss']))
  assert run.steps.train_step._cache_size() == 1  # pylint: disable=protected-access
  return losses


def test_only_the_prompt_changes_and_the_loss_falls(tmp_path):
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  _, run = _prepared(tmp_path, mesh)
  assert list(run.state.trainable) == ['encoder'] and list(run.state.trainable['encoder']) == [
      'prompt']
  frozen_before = jax.device_get(run.frozen)
  prompt_before = np.asarray(run.state.trainable['encoder']['prompt']['prompt'])
  losses = _train(run, _batches(40))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.frozen), frozen_before)
  assert checkpoints.fingerprint(run.frozen) == run.frozen_record['fingerprint']
  assert not np.allclose(run.state.trainable['encoder']['prompt']['prompt'], prompt_before)
  assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
  optimizer_leaves = jax.tree.leaves(run.state.opt_state)
  assert sum(x.size for x in optimizer_leaves) < 10 * prompt_before.size  # Prompt-sized.


def test_eight_devices_give_the_same_prompt_as_one(tmp_path):
  batches = _batches(4)
  prompts = []
  for name, mesh in (('one', partitioning.create_mesh(devices=jax.devices()[:1])),
                     ('eight', partitioning.create_mesh(mesh_shape=(4, 2)))):
    _, run = _prepared(tmp_path / name, mesh)
    _train(run, batches)
    prompts.append(np.asarray(run.state.trainable['encoder']['prompt']['prompt']))
    if name == 'eight':
      kernel = run.frozen['decoder']['layers_0']['mlp']['wi_0']['kernel']
      assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'model')
  np.testing.assert_allclose(prompts[0], prompts[1], rtol=1e-4, atol=1e-6)


def _final_state(model_dir, step):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(model_dir, 'checkpoints', str(step), 'state'))


def test_resume_equals_an_uninterrupted_run(tmp_path, capsys):
  """Also after a save that was cut short: the resume starts from the last complete step,
  reading on from the data position saved with it (no batch replayed)."""
  _parse(tmp_path / 'straight', 'TRAIN_STEPS = 6', 'KEEP_CHECKPOINTS = 1')
  train.train()
  assert os.listdir(tmp_path / 'straight' / 'data_positions') == ['6']
  _parse(tmp_path / 'resumed', 'TRAIN_STEPS = 3')
  train.train()
  # A run killed while saving step 5 leaves only orbax's temporary folder behind.
  partial = tmp_path / 'resumed' / 'checkpoints' / '5.orbax-checkpoint-tmp-1795950000'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'manifest.ocdbt').write_bytes(b'\x00' * 10)
  _parse(tmp_path / 'resumed', 'TRAIN_STEPS = 6')
  capsys.readouterr()
  train.train()
  assert 'replaying' not in capsys.readouterr().out
  straight, resumed = (_final_state(tmp_path / name, 6) for name in ('straight', 'resumed'))
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  np.testing.assert_array_equal(np.load(tmp_path / 'resumed' / 'prompt.npy'),
                                np.load(tmp_path / 'straight' / 'prompt.npy'))


def test_a_saved_data_position_continues_where_replaying_would(tmp_path):
  """Batches after a restored position equal those after replaying (skipping) as many."""
  config = data.DataConfig('tiny_sentiment', FEATURES, batch_size=8)
  straight = data.host_batches(config, 0, 1)
  for _ in range(5):
    next(straight)
  straight.save(str(tmp_path / 'position'))
  replayed = data.host_batches(config, 0, 1, start_step=5)
  restored = data.host_batches(config, 0, 1, position=str(tmp_path / 'position'))
  for _ in range(3):
    want = next(straight)
    for batches in (replayed, restored):
      jax.tree.map(np.testing.assert_array_equal, next(batches), want)


def test_a_pipeline_tf_data_cannot_save_gives_no_position(tmp_path):
  """A preprocessor with a `tf.py_function` (stateful): nothing is written, and saving says so."""
  stateful = tf.data.Dataset.range(8).map(
      lambda x: {'x': tf.py_function(lambda y: y, [x], tf.int64)}).batch(2)
  batches = data.HostBatches(stateful)
  next(batches)
  assert not batches.save(str(tmp_path / 'position')) and not os.listdir(tmp_path)


def _tensorboard_scalars(model_dir, name):
  """{step: value} of the train scalar `name` in MODEL_DIR/train's event files."""
  values = {}
  for path in (tmp for tmp in (model_dir / 'train').iterdir() if 'tfevents' in tmp.name):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == name:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def _count_host_reads(monkeypatch) -> dict:
  """Counts how the host waits for the device while training: each `jax.device_get` of
  the train metrics (its number of steps) in 'fetches', and in 'implicit' every array read
  on the host outside a `jax.device_get` (`float(x)`, `int(x)`, `np.asarray(x)`, ...).
  jax's transfer guard cannot be used for this: it does not fire on the CPU."""
  counts, inside = {'fetches': [], 'implicit': 0}, []
  device_get, value = jax.device_get, jax_array.ArrayImpl._value

  def counted_get(tree):
    if isinstance(tree, list) and all(isinstance(item, dict) and 'loss' in item
                                      for item in tree):
      counts['fetches'].append(len(tree))
    inside.append(True)
    try:
      return device_get(tree)
    finally:
      inside.pop()

  def counted_value(array):
    counts['implicit'] += not inside
    return value.fget(array)

  monkeypatch.setattr(jax, 'device_get', counted_get)
  monkeypatch.setattr(jax_array.ArrayImpl, '_value', property(counted_value))
  return counts


def test_the_loop_fetches_metrics_once_per_log_period_and_keeps_every_step(tmp_path,
                                                                           monkeypatch):
  """The host reads the step metrics once per LOG_PERIOD steps and nothing else per step
  (8 more steps add 2 fetches and no other read); TensorBoard still gets every step's
  values, equal to a LOG_PERIOD = 1 run's."""
  _parse(tmp_path / 'every_step', 'TRAIN_STEPS = 8', 'LOG_PERIOD = 1', 'CHECKPOINT_PERIOD = 8')
  train.train()
  reads = {}
  for steps in (8, 16):
    gin.clear_config()
    _parse(tmp_path / f'periodic_{steps}', f'TRAIN_STEPS = {steps}', 'LOG_PERIOD = 4',
           f'CHECKPOINT_PERIOD = {steps}')
    with monkeypatch.context() as patch:
      reads[steps] = _count_host_reads(patch)
      train.train()
  assert reads[8]['fetches'] == [4, 4] and reads[16]['fetches'] == [4] * 4
  assert reads[16]['implicit'] == reads[8]['implicit']
  for name in ('loss', 'grad_norm'):
    every_step = _tensorboard_scalars(tmp_path / 'every_step', name)
    assert sorted(every_step) == list(range(1, 9))
    assert _tensorboard_scalars(tmp_path / 'periodic_8', name) == every_step


def _checkpoint_files(model_dir):
  return sorted((path, os.path.getmtime(os.path.join(path, name)))
                for path, _, names in os.walk(os.path.join(model_dir, 'checkpoints'))
                for name in names)


@pytest.mark.parametrize('binding,message', [
    ('PROMPT_LENGTH = 6', 'trainable shapes .* PROMPT_LENGTH'),
    ('SEED = 1', 'trained on frozen weights .* same frozen weights'),
])
def test_refuses_to_resume_a_different_run_and_keeps_its_checkpoint(tmp_path, binding, message):
  _parse(tmp_path, 'TRAIN_STEPS = 3')
  train.train()
  before = _checkpoint_files(tmp_path)
  _parse(tmp_path, 'TRAIN_STEPS = 6', binding)
  with pytest.raises(ValueError, match=message):
    train.train()
  assert _checkpoint_files(tmp_path) == before


@pytest.mark.parametrize('binding,message', [
    ("MIXTURE_OR_TASK_NAME = 'no_such_task'", "unknown task or mixture 'no_such_task'"),
    ('data.DataConfig.pack = True', 'packing is not supported with a prompt'),
    ("MIXTURE_OR_TASK_MODULE = 'no_such_module'", "cannot import task module 'no_such_module'"),
])
def test_bad_data_settings_fail_before_anything_is_written(tmp_path, binding, message):
  _parse(tmp_path / 'run', binding)
  with pytest.raises(ValueError, match=message):
    train.train()
  assert not os.path.exists(tmp_path / 'run')
