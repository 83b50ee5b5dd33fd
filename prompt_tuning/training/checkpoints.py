"""Orbax checkpoints of the train state, frozen-weight loading, fingerprints and export.

A run's checkpoint (`MODEL_DIR/checkpoints/<step>/`) holds what the run changed (the
`TrainState`: step, trainable params, optimiser state, rng) and `meta`: the data position,
the trainable shapes, and the frozen weights' path and fingerprint. Each host's position in
its data (the tf.data iterator's state) is in `MODEL_DIR/data_positions/<step>/`. Orbax writes each step
to a temporary folder and renames it when complete, so a run killed mid-save resumes
from the previous complete step.
"""

import contextlib
import dataclasses
import hashlib
import os
from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from etils import epath
from flax import traverse_util

from prompt_tuning.training import data
from prompt_tuning.training import trainer
from prompt_tuning.training import write_errors

Params = Any


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When to save and what to keep."""
  period: int = 1000  # Save every `period` steps (and at the end).
  keep: int = 3  # The newest `keep` steps stay.
  best_metric: Optional[str] = None  # E.g. 'my_task/accuracy': also keep the best step.
  best_mode: str = 'max'  # 'max' or 'min' for `best_metric`.


def as_path(path: str) -> epath.Path:
  """A local path (made absolute) or a URL such as `gs://bucket/run`: MODEL_DIR and
  checkpoints are read and written through this, so a pod's hosts can share a bucket."""
  return epath.Path(path if '://' in path else os.path.abspath(path))


def fingerprint(params: Params) -> str:
  """A short hash of the exact bits of every array (independent of sharding and order of
  reduction: sums of the raw bits, modulo 2^32, plain and position-weighted)."""
  @jax.jit
  def checksums(tree):
    def one(x):
      bits = jax.lax.bitcast_convert_type(x, {2: jnp.uint16, 4: jnp.uint32, 1: jnp.uint8}[
          x.dtype.itemsize]).astype(jnp.uint32).reshape(-1)
      weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
      return jnp.stack([bits.sum(dtype=jnp.uint32), (bits * weights).sum(dtype=jnp.uint32)])
    return jax.tree.map(one, tree)

  leaves = traverse_util.flatten_dict(params, sep='/')
  sums = traverse_util.flatten_dict(jax.device_get(checksums(params)), sep='/')
  digest = hashlib.sha256()
  for path in sorted(leaves):
    digest.update(f'{path}:{leaves[path].shape}:{leaves[path].dtype}:{sums[path].tolist()};'
                  .encode())
  return digest.hexdigest()[:16]


def save_params(directory: str, params: Params) -> None:
  """Writes a full parameter tree in our own format (an orbax checkpoint)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(as_path(directory), params, force=True)


def load_params(directory: str, abstract_params: Params) -> Params:
  """Reads our format straight into the shardings of `abstract_params`
  (`jax.ShapeDtypeStruct`s with `sharding`), checking every shape."""
  directory = as_path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f'INITIAL_CHECKPOINT_PATH {directory} does not exist.')
  with ocp.StandardCheckpointer() as checkpointer:
    stored = checkpointer.metadata(directory).item_metadata.tree
    flat_stored = traverse_util.flatten_dict(dict(stored), sep='/')
    for path, want in traverse_util.flatten_dict(abstract_params, sep='/').items():
      got = flat_stored.get(path)
      if got is None or tuple(got.shape) != tuple(want.shape):
        raise ValueError(f'INITIAL_CHECKPOINT_PATH {directory}: {path} is '
                         f'{None if got is None else tuple(got.shape)} but the gin model needs '
                         f'{tuple(want.shape)}; use the model gin file of that checkpoint.')
    return checkpointer.restore(directory, abstract_params)


class RunCheckpoints:
  """The checkpoints of one run in `MODEL_DIR/checkpoints` (and `MODEL_DIR/best`).

  Opening them reads only; `make_directories` creates the folders once a run proceeds.
  """

  def __init__(self, model_dir: str, config: CheckpointConfig = CheckpointConfig()):
    self.config = config
    self.save_failed = False  # Set once a failed save was reported: `close` adds no second.
    self.position_noted = False  # Said once that the data position cannot be saved.
    self.directories = [as_path(model_dir) / 'checkpoints']
    self._data_positions = as_path(model_dir) / 'data_positions'  # <step>/process_<i>_of_<n>.
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep, create=False)
    self.latest = ocp.CheckpointManager(self.directories[0], options=options,
                                        item_names=('state', 'meta'))
    self.best = None
    if config.best_metric:
      self.directories.append(as_path(model_dir) / 'best')
      best_options = ocp.CheckpointManagerOptions(
          max_to_keep=1, create=False, best_mode=config.best_mode,
          best_fn=lambda metrics: metrics[config.best_metric])
      self.best = ocp.CheckpointManager(self.directories[1], options=best_options,
                                        item_names=('state', 'meta'))

  def data_position(self, step: int) -> Optional[str]:
    """Where this host's data position at `step` was saved (`save_data_position`), or None
    (not saved, or by a run with another number of hosts)."""
    prefix = self._data_prefix(step)
    return str(prefix) if prefix.with_name(prefix.name + '.index').exists() else None

  def save_data_position(self, step: int, batches: data.HostBatches) -> None:
    """Saves this host's position in its batches after `step` of them (before the
    checkpoint of `step`, so that every complete checkpoint has one); process 0 drops
    those of steps older than the newest `keep` checkpoints. A failed write is the failed
    save of checkpoint `step` (one line); a pipeline whose state tf.data cannot save is said
    once, and its runs resume by replaying."""
    prefix = self._data_prefix(step)
    try:
      saved = batches.save(str(prefix))
    except tf.errors.OpError as e:
      self._remove_data_position(prefix)
      self._raise_save_error(self.latest, step, e)
    if not saved:
      self._remove_data_position(prefix)
      if not self.position_noted and jax.process_index() == 0:
        print('note: this task\'s data pipeline holds state tf.data cannot save (e.g. a '
              'tf.py_function), so no data position is saved: a resumed run replays the '
              'batches before its step.', flush=True)
      self.position_noted = True
    if jax.process_index() == 0:
      kept = {str(kept_step) for kept_step in
              sorted({*self.latest.all_steps(), step})[-self.config.keep:]}
      for folder in self._data_positions.iterdir():
        if folder.name not in kept:
          folder.rmtree()

  @staticmethod
  def _remove_data_position(prefix: epath.Path) -> None:
    """Deletes what this host wrote at `prefix` (TensorFlow's files and temporary folder)."""
    if prefix.parent.exists():
      for path in prefix.parent.glob(prefix.name + '*'):
        path.rmtree(missing_ok=True) if path.is_dir() else path.unlink(missing_ok=True)

  def _data_prefix(self, step: int) -> epath.Path:
    return (self._data_positions / str(step) /
            f'process_{jax.process_index()}_of_{jax.process_count()}')

  def make_directories(self) -> None:
    for directory in self.directories:
      directory.mkdir(parents=True, exist_ok=True)

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, state: trainer.TrainState, meta: dict, metrics: Optional[dict] = None):
    """Starts saving `state` at its step; orbax finishes writing in the background. A
    failed write, of this step or of the previous one still in flight, raises
    `write_errors.CheckpointSaveError` (one line) after deleting the half-written step."""
    step = int(state.step)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if step not in self.latest.all_steps():
      self._saving(self.latest, step, lambda: self.latest.save(step, args=args))
    if self.best and metrics and self.config.best_metric in metrics:
      self._saving(self.best, step, lambda: self.best.save(
          step, args=args, metrics={k: float(v) for k, v in metrics.items()}))

  def _saving(self, manager: ocp.CheckpointManager, step: int, start) -> None:
    """Waits for `manager`'s save in flight, then calls `start`; either failing is one line."""
    try:
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # Only failed writes change.
      self._raise_save_error(manager, None, e)
    try:
      start()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_save_error(manager, step, e)

  def _raise_save_error(self, manager: ocp.CheckpointManager, step: Optional[int],
                        error: Exception):
    """Deletes the half-written step (process 0), then raises the one-line error for a
    failed write (naming the step, from its folder if not given), or `error` itself."""
    partial = []
    if jax.process_index() == 0:
      with contextlib.suppress(OSError):  # The error to report is `error`.
        partial = write_errors.remove_partial_saves(manager.directory)
    self.latest.reload()
    if step is None and partial:
      step = max(partial)
    clear = write_errors.checkpoint_save_error(step, manager.directory, error,
                                               self.latest.latest_step())
    self.save_failed = True
    if clear is None:
      raise error
    raise clear from error

  def read_meta(self, step: int) -> dict:
    return self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, step: int, like: trainer.TrainState) -> trainer.TrainState:
    """The state at `step`, placed with the shardings of the state `like`; a checkpoint
    whose optimiser state has another structure is refused in one line."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            like)
    try:
      return self.latest.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'the checkpoint at step {step} in {self.directories[0]} does not fit '
                       f'this run\'s optimiser state ({type(e).__name__}); resume with the '
                       'optimizer it was trained with, or use a new MODEL_DIR.') from None

  def close(self):
    """Waits for the saves in flight and closes; a failed one raises as in `save`, unless
    `save` already raised one (then this only cleans up)."""
    reported, error = self.save_failed, None
    for manager in (self.latest, self.best):
      if not manager:
        continue
      try:
        try:
          manager.wait_until_finished()
        except Exception as e:  # pylint: disable=broad-except  # Only failed writes change.
          self._raise_save_error(manager, None, e)
        manager.close()
      except Exception as e:  # pylint: disable=broad-except  # Close the other one too.
        error = error or e
    if error is not None and not reported:
      raise error


def trainable_shapes(trainable: Params) -> dict[str, list[int]]:
  return {path: list(x.shape) for path, x in traverse_util.flatten_dict(trainable, sep='/').items()}


def check_resumable(meta: dict, trainable: Params, frozen_record: dict) -> None:
  """Refuses to resume a run whose trainable shapes or frozen weights (by fingerprint; the
  path may differ, e.g. a copy) differ from the checkpoint's."""
  shapes = trainable_shapes(trainable)
  if meta['trainable_shapes'] != shapes:
    raise ValueError(f'MODEL_DIR holds a checkpoint with trainable shapes '
                     f'{meta["trainable_shapes"]} but this run builds {shapes} (a different '
                     'PROMPT_LENGTH or model?); use the original settings or a new MODEL_DIR.')
  if meta['frozen']['fingerprint'] != frozen_record['fingerprint']:
    raise ValueError(f'MODEL_DIR was trained on frozen weights {meta["frozen"]} but this run '
                     f'loads {frozen_record}; resume with the same frozen weights or use a new '
                     'MODEL_DIR.')


def export_prompt(prompt: jax.Array, path: str) -> None:
  """Writes the prompt `[P, E]` as float32 `.npy`."""
  prompt = np.asarray(jax.device_get(prompt), np.float32)
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    np.save(f, prompt)
