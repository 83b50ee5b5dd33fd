"""Checks that run before a run writes anything: each refuses with one line naming the fix.

Train, evaluate and infer call these before their first write to MODEL_DIR, so a refused
run leaves MODEL_DIR exactly as it was.
"""

import os
from typing import Mapping, Optional

import jax

FEATURES = ('inputs', 'targets')


def check_feature_lengths(lengths: Mapping[str, int], name: str = 'TASK_FEATURE_LENGTHS') -> None:
  """`lengths` has a positive integer length for each of `inputs` and `targets`."""
  for feature in FEATURES:
    length = lengths.get(feature) if isinstance(lengths, Mapping) else None
    if not isinstance(length, int) or length <= 0:
      example = "{'inputs': 512, 'targets': 16}"
      raise ValueError(f'{name} needs a positive length for {feature!r}, got {lengths!r}; '
                       f'pass e.g. --gin.{name}="{example}".')


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  return mesh.shape['data']


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, name: str = 'BATCH_SIZE') -> None:
  """A train batch splits evenly over the mesh's data axis (and the hosts)."""
  ways = data_parallel_size(mesh)
  if batch_size <= 0:
    raise ValueError(f'{name}={batch_size} must be positive; use a multiple of {ways}.')
  if batch_size % ways:
    below, above = batch_size // ways * ways, (batch_size // ways + 1) * ways
    nearest = f'{below} or {above}' if below else f'{above}'
    raise ValueError(f'{name}={batch_size} does not split over the {ways}-way data '
                     f'parallelism of the mesh (data={ways} × model={mesh.shape["model"]}); '
                     f'use {nearest}, or another mesh (NUM_PARTITIONS).')


def check_train_steps(train_steps: int, saved_step: Optional[int], model_dir: str) -> None:
  """TRAIN_STEPS is positive and not below the step MODEL_DIR already holds."""
  if train_steps < 0:
    raise ValueError(f'TRAIN_STEPS={train_steps} must not be negative.')
  if saved_step is not None and train_steps < saved_step:
    raise ValueError(f'MODEL_DIR {model_dir} already holds step {saved_step}, past '
                     f'TRAIN_STEPS={train_steps}; raise TRAIN_STEPS to continue it, or use a '
                     'new MODEL_DIR.')


def check_writable(model_dir: str) -> None:
  """MODEL_DIR (or, if it does not exist yet, its nearest existing parent) is a writable
  directory. URLs (gs://) are left to the file system to refuse."""
  if '://' in model_dir:
    return
  path = os.path.abspath(model_dir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f'MODEL_DIR {model_dir} cannot be made: {existing} is a file, not a '
                     'directory; choose another MODEL_DIR.')
  if not os.access(existing, os.W_OK | os.X_OK):
    what = 'MODEL_DIR' if existing == path else f'its parent {existing}'
    why = ('is on a read-only file system' if os.statvfs(existing).f_flag & os.ST_RDONLY
           else 'is read-only for this user')
    raise ValueError(f'MODEL_DIR {model_dir} is not writable ({what} {why}); choose a '
                     'writable MODEL_DIR.')
