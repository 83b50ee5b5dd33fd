"""Sharding: the logical-axis rules give the agreed PartitionSpecs (golden file) and real
shardings on an 8-device (data 4 x model 2) CPU mesh."""

import os

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from prompt_tuning import gin_config
from prompt_tuning import models
from prompt_tuning import partitioning

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
