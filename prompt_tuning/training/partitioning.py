"""Meshes and shardings: one table of logical-axis rules maps every array onto the mesh.

The mesh has axes `('data', 'model')`. Model code names only logical axes (`batch`,
`embed`, `mlp`, ...); `LOGICAL_AXIS_RULES` says which mesh axis each one is split over.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# t5x's standard rules, plus the prompt's axis (replicated: a prompt is tiny).
LOGICAL_AXIS_RULES = (
    ('batch', 'data'),
    ('vocab', 'model'),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('joined_kv', 'model'),
    ('kv', None),
    ('embed', None),
    ('length', None),
    ('relpos_buckets', None),
    ('prompt', None),
    ('layers', None),  # The stacked axis of `scan_layers` parameters.
    ('prompts', None),  # The N prompts of a `prompts.PromptTable` (replicated, like a prompt).
)


@gin.configurable
def create_mesh(num_partitions: int = 1, mesh_shape: Optional[Sequence[int]] = None,
                devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A `('data', 'model')` mesh over all devices (or `devices`).

  Args:
    num_partitions: model-parallel size; the data-parallel size is the rest.
    mesh_shape: explicit `(data, model)` sizes instead of `num_partitions`.
    devices: defaults to `jax.devices()`.
  """
  devices = list(jax.devices() if devices is None else devices)
  data, model = mesh_shape or (len(devices) // max(num_partitions, 1), num_partitions)
  if data * model != len(devices):
    raise ValueError(f'mesh shape (data={data}, model={model}) needs {data * model} devices '
                     f'but {len(devices)} are available; change num_partitions or mesh_shape.')
  if devices[0].platform == 'tpu':
    grid = mesh_utils.create_device_mesh((data, model), devices)  # Topology-aware order.
  else:
    grid = np.asarray(devices).reshape(data, model)
  return Mesh(grid, ('data', 'model'))


def logical_shardings(mesh: Mesh, logical_specs: Any) -> Any:
  """A tree of logical `PartitionSpec`s -> the matching tree of `NamedSharding`s."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def mesh_specs(logical_specs: Any) -> Any:
  """A tree of logical `PartitionSpec`s -> mesh `PartitionSpec`s (for golden files)."""
  return nn.logical_to_mesh(logical_specs, LOGICAL_AXIS_RULES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches `[B, ...]` split over `data`."""
  return NamedSharding(mesh, PartitionSpec('data'))


def host_batch_to_global(mesh: Mesh, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Each process's slice of the batch -> global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in host_batch.items()}
