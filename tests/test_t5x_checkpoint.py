"""T5X checkpoints, written here as T5X writes them, load into the shardings of a run."""

import os

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from flax import serialization
from flax import traverse_util

from test_trainer import FEATURES, _batches, _parse, _train
from tiny_checkpoints import TINY, assert_placed, load, random_params
from prompt_tuning.formats import t5x_checkpoint
from prompt_tuning.model import models
from prompt_tuning.model import network
from prompt_tuning.training import checkpoints
from prompt_tuning.training import partitioning
from prompt_tuning.training import runs


def _zarr_spec(directory, name, value, driver):
  """Writes `value` as T5X does (gzip zarr in `directory/name`); returns the spec it stores."""
  chunks = [max(1, value.shape[0] // 2), *value.shape[1:]]  # Several chunk files.
  metadata = {'compressor': {'id': 'gzip'}, 'shape': list(value.shape), 'chunks': chunks,
              'dtype': '<f4'}
  ts.open({'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': os.path.join(directory, name)},
           'metadata': metadata}, create=True).result().write(value).result()
  stored = {'compressor': {'id': 'gzip'}, 'shape': np.asarray(value.shape),
            'chunks': np.asarray(chunks)}
  spec = {'driver': 'zarr', 'dtype': 'float32', 'metadata': stored}
  if driver == 'tensorstore<0.1.14':  # The path beside the kvstore.
    return {**spec, 'kvstore': {'driver': 'file'}, 'path': name}
  kvstore = {'driver': driver, 'path': name}
  if driver == 'gcs':
    kvstore['bucket'] = 't5x-dummy-bucket'  # T5X's placeholder; the real bucket is the URL's.
  return {**spec, 'kvstore': kvstore}


def write_legacy(directory, params, driver='file', step=7):
  """A legacy T5X `checkpoint_<step>/`: msgpack `checkpoint` + zarr folders named by dotted
  path; 1-D arrays inline; Adafactor-style slots under optimizer/state/param_states."""
  os.makedirs(directory)
  leaf = lambda name, value: (value if value.ndim < 2 else
                              _zarr_spec(directory, name, value, driver))
  flat = traverse_util.flatten_dict(params, sep='.')
  target = {path: leaf(f'target.{path}', np.asarray(value)) for path, value in flat.items()}
  slots = {f'{path}.v_row': np.ones(value.shape[:1], np.float32) for path, value in flat.items()}
  contents = {'version': 3, 'optimizer': {
      'target': traverse_util.unflatten_dict(target, sep='.'),
      'state': {'step': np.asarray(step), 'param_states': traverse_util.unflatten_dict(
          slots, sep='.')}}}
  with open(os.path.join(directory, 'checkpoint'), 'wb') as f:
    f.write(serialization.msgpack_serialize(contents))


def write_orbax(directory, params):
  """A T5X `checkpoint_<step>/` of the Orbax layout: the train state as item `state/`."""
  slots = jax.tree.map(lambda x: {'v': np.zeros_like(x)}, params)
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, 'state'),
                      {'target': params, 'state': {'step': 7, 'param_states': slots}})


@pytest.mark.parametrize('driver', ['file', 'gfile', 'gcs', 'tensorstore<0.1.14'])
def test_legacy_checkpoint_loads_into_the_target_shardings(tmp_path, driver):
  params = random_params()
  write_legacy(tmp_path / 'checkpoint_7', params, driver)
  assert os.path.isfile(tmp_path / 'checkpoint_7' / 'target.encoder.layers_0.attention.query.kernel'
                        / '.zarray')
  loaded, shardings = load(str(tmp_path / 'checkpoint_7'))
  assert_placed(loaded, shardings, params)
  kernel = loaded['decoder']['layers_0']['mlp']['wi_0']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'model')


def test_specs_resolve_against_the_checkpoint_url():
  """On `gs://` the stored relative path (any driver, placeholder bucket) goes to the GCS
  driver with the checkpoint's own bucket; reading it needs the network, so only this is
  checked here."""
  stored = {'driver': 'zarr', 'kvstore': {'driver': 'gcs', 'bucket': 't5x-dummy-bucket',
                                          'path': 'target.encoder.encoder_norm.scale'}}
  resolved = t5x_checkpoint.absolute_spec(stored, 'gs://my-bucket/base/checkpoint_1100000')
  assert resolved == {'driver': 'zarr', 'kvstore': {
      'driver': 'gcs', 'bucket': 'my-bucket',
      'path': 'base/checkpoint_1100000/target.encoder.encoder_norm.scale'}}
  local = t5x_checkpoint.absolute_spec({**stored, 'kvstore': {'driver': 'gfile', 'path': 'x'}},
                                       '/ckpt/checkpoint_7')
  assert local['kvstore'] == {'driver': 'file', 'path': '/ckpt/checkpoint_7/x'}
  with pytest.raises(ValueError, match="cannot read the array spec with kvstore {'driver': "
                     "'memory'}; this reader takes the zarr arrays T5X writes"):
    t5x_checkpoint.absolute_spec({**stored, 'kvstore': {'driver': 'memory'}}, '/ckpt')


def test_orbax_checkpoint_loads_from_the_step_or_the_state_item(tmp_path):
  params = random_params()
  write_orbax(tmp_path / 'checkpoint_7', params)
  for path in (tmp_path / 'checkpoint_7', tmp_path / 'checkpoint_7' / 'state'):
    assert_placed(*load(str(path)), params)


@pytest.mark.parametrize('write', [write_legacy, write_orbax])
def test_unscanned_checkpoint_loads_into_a_scanned_model(tmp_path, write):
  params = random_params()
  write(tmp_path / 'checkpoint_7', params)
  scanned = network.T5Config(**{**TINY.__dict__, 'scan_layers': True})
  loaded, shardings = load(str(tmp_path / 'checkpoint_7'), scanned)
  assert_placed(loaded, shardings, jax.device_get(network.stack_layers(params, TINY)))


@pytest.mark.parametrize('write', [write_legacy, write_orbax])
def test_checkpoint_of_another_size_is_a_clear_error(tmp_path, write):
  other = network.T5Config(**{**TINY.__dict__, 'emb_dim': 16, 'num_encoder_layers': 3})
  write(tmp_path / 'checkpoint_7', random_params(other))
  with pytest.raises(ValueError, match=r'T5X .*another model than the gin model: emb_dim 16 '
                     r'\(checkpoint\) vs 32 \(gin model\); num_encoder_layers 3 \(checkpoint\) '
                     r'vs 2 \(gin model\); use the model gin file'):
    load(str(tmp_path / 'checkpoint_7'))


def test_damaged_or_foreign_directories_are_clear_errors(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='is no checkpoint this library reads: expected our format'):
    load(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load(str(tmp_path / 'missing'))
  (tmp_path / 'garbage').mkdir()
  (tmp_path / 'garbage' / 'checkpoint').write_bytes(b'\xc1 not msgpack')
  with pytest.raises(ValueError, match='`checkpoint` is not flax msgpack'):
    load(str(tmp_path / 'garbage'))
  write_legacy(tmp_path / 'incomplete', random_params())
  os.rename(tmp_path / 'incomplete' / 'target.token_embedder.embedding', tmp_path / 'moved')
  with pytest.raises(ValueError, match='cannot open the zarr array of token_embedder/embedding'):
    load(str(tmp_path / 'incomplete'))


@pytest.fixture
def _clear_gin():
  yield
  gin.clear_config()


@pytest.mark.usefixtures('_clear_gin')
def test_a_prompt_trains_on_a_t5x_checkpoint(tmp_path):
  """The tiny gin model's random weights, written as T5X, are the frozen weights of a run."""
  _parse(tmp_path / 'run', f"INITIAL_CHECKPOINT_PATH = '{tmp_path / 'checkpoint_7'}'")
  setup = runs.RunSetup()
  frozen = random_params(setup.model.module.config)
  write_legacy(tmp_path / 'checkpoint_7', frozen)
  run = runs.prepare(setup, models.EncoderDecoderModel.batch_shapes(FEATURES, 8), checkpoints.CheckpointConfig(),
                     partitioning.create_mesh(mesh_shape=(4, 2)))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.frozen), frozen)
  prompt = np.asarray(run.state.trainable['encoder']['prompt']['prompt'])
  losses = _train(run, _batches(3))
  assert np.isfinite(losses).all()
  assert not np.allclose(run.state.trainable['encoder']['prompt']['prompt'], prompt)
  assert checkpoints.fingerprint(run.frozen) == run.frozen_record['fingerprint']
