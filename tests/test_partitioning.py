"""Sharding: the logical-axis rules give the agreed PartitionSpecs (golden file) and real
shardings on an 8-device (data 4 x model 2) CPU mesh."""

import os

import gin
import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from prompt_tuning import gin_config
from prompt_tuning.model import models
from prompt_tuning.training import partitioning

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 't5_1_1_small_prompt_specs.txt')
SHAPES = {name: jax.ShapeDtypeStruct((8, 16), jnp.int32) for name in
          ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')}


def _spec_lines():
  gin_config.parse(['models/t5_1_1_small.gin', 'prompts/uniform.gin'], ['PROMPT_LENGTH = 20'])
  axes = models.build_model().logical_axes(SHAPES)
  flat = traverse_util.flatten_dict(partitioning.mesh_specs(axes), sep='/')
  # One line per distinct parameter kind: layer numbers beyond 0 repeat layer 0.
  return sorted({f'{path}: {spec}' for path, spec in flat.items()
                 if 'layers_' not in path or 'layers_0/' in path})


def test_partition_specs_match_the_golden_file():
  """Regenerate after an intended change: UPDATE_GOLDEN=1 pytest tests/test_partitioning.py."""
  lines = _spec_lines()
  if os.environ.get('UPDATE_GOLDEN'):
    with open(GOLDEN, 'w') as f:
      f.write('\n'.join(lines) + '\n')
  with open(GOLDEN) as f:
    assert lines == f.read().splitlines()


def test_mesh_shapes_and_errors():
  mesh = partitioning.create_mesh(num_partitions=2)
  assert dict(mesh.shape) == {'data': 4, 'model': 2}
  assert dict(partitioning.create_mesh(mesh_shape=(2, 4)).shape) == {'data': 2, 'model': 4}
  with pytest.raises(ValueError, match='needs 9 devices but 8 are available'):
    partitioning.create_mesh(mesh_shape=(3, 3))


def test_global_batches_split_over_data():
  mesh = partitioning.create_mesh(num_partitions=2)
  batch = partitioning.host_batch_to_global(mesh, {'x': jnp.arange(32).reshape(8, 4)})
  assert batch['x'].sharding.spec == jax.sharding.PartitionSpec('data')
  assert {shard.data.shape for shard in batch['x'].addressable_shards} == {(2, 4)}


PRESETS = sorted(name[:-len('.gin')] for name in
                 os.listdir(os.path.join(gin_config.GIN_DIR, 'partitioning')))


def _devices_of(preset: str) -> int:
  """JAX devices of the preset's slice: v2/v3-N has N cores (one device each); v4-N and
  v5p-N count 2 cores per chip (one device per chip); v5e-N has N chips; gpu_N, N GPUs."""
  kind, _, rest = preset.partition('_')
  if kind == 'gpu':
    return int(rest.split('_')[0])
  generation, count = rest.split('_')[:2]
  return int(count) // 2 if generation in ('v4', 'v5p') else int(count)


@pytest.fixture
def _clean_gin():
  yield
  gin.clear_config()  # The presets' mesh shapes must not reach other tests.


@pytest.mark.usefixtures('_clean_gin')
@pytest.mark.parametrize('preset', PRESETS)
def test_partitioning_presets_fit_their_slice(preset):
  gin_config.parse(['models/t5_1_1_xxl.gin', 'prompts/uniform.gin', 'runs/prompt_finetune.gin',
                    f'partitioning/{preset}.gin'],
                   ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'unused'"])
  data, model = gin.query_parameter('partitioning.create_mesh.mesh_shape')
  assert data * model == _devices_of(preset)
  assert 32 % data == 0  # The paper's batch size splits over the data axis.
  # Every model-parallel dimension of XXL (the largest) divides evenly.
  config = models.build_model().module.config
  for size in (config.num_heads, config.mlp_dim, config.vocab_size):
    assert size % model == 0, (preset, size)
  if data * model == len(jax.devices()):
    assert dict(partitioning.create_mesh().shape) == {'data': data, 'model': model}
  else:
    with pytest.raises(ValueError, match=f'needs {data * model} devices but 8 are available'):
      partitioning.create_mesh()
