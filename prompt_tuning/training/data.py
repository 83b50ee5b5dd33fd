"""seqio tasks -> per-host numpy batches in a deterministic, resumable order."""

import dataclasses
import importlib
from typing import Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

tf.config.set_visible_devices([], 'GPU')  # tf.data only; accelerators belong to JAX.

HostBatch = dict[str, np.ndarray]  # `[B / num_hosts, ...]` arrays.


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which examples a run reads and how they are batched."""
  mixture_or_task_name: str  # A registered seqio Task or Mixture.
  task_feature_lengths: Mapping[str, int]  # E.g. {'inputs': 512, 'targets': 16}.
  split: str = 'train'
  batch_size: int = 32  # Global, over all hosts.
  shuffle: bool = True
  seed: int = 42  # Fixes the shuffle, so a resumed run sees the same order.
  pack: bool = False  # Refused with a prompt: each example needs its own prompt.
  use_cached: bool = False  # Read a seqio cache made by seqio's cache_tasks_main.
  # The model's (`model.feature_converter(pack)`; train sets it); None: a T5's.
  feature_converter: Optional[seqio.FeatureConverter] = None


def import_task_modules(modules: str | Sequence[str]) -> None:
  """Imports the module(s) that register seqio tasks (MIXTURE_OR_TASK_MODULE)."""
  for module in [modules] if isinstance(modules, str) else modules:
    try:
      with gin.unlock_config():  # A task module may register gin configurables.
        importlib.import_module(module)
    except ImportError as e:
      raise ValueError(f'cannot import task module {module!r} ({e}); check '
                       'MIXTURE_OR_TASK_MODULE and PYTHONPATH.') from None


def get_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture, or a clear error."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    raise ValueError(f'unknown task or mixture {name!r}: register it in a module and name '
                     'that module in MIXTURE_OR_TASK_MODULE (or a gin import line).') from None


def check_eos(name: str, eos_id: int) -> None:
  """Refuses a task or mixture whose targets end with another EOS than the model's `eos_id`
  (where decoding stops)."""
  task = get_task(name)
  for each in task.tasks if isinstance(task, seqio.Mixture) else [task]:
    feature = each.output_features.get('targets')
    if feature is not None and feature.add_eos and feature.vocabulary.eos_id != eos_id:
      raise ValueError(f"task {each.name}'s targets end with EOS {feature.vocabulary.eos_id} "
                       f'but the model stops at eos_id={eos_id}; set --gin.models.build_model.'
                       f'eos_id={feature.vocabulary.eos_id} or give the task the model\'s '
                       'tokenizer.')


def check_packing(config: DataConfig, prompt_length: int) -> None:
  if config.pack and prompt_length:
    raise ValueError('packing is not supported with a prompt (each example needs its own '
                     'prompt); set DataConfig.pack = False.')


def _sources_shard(task: seqio.Task | seqio.Mixture, split: str, num_shards: int) -> bool:
  """Whether every source can hand each host its own shard (it has a file per host)."""
  tasks = task.tasks if isinstance(task, seqio.Mixture) else [task]
  return all(t.source.supports_arbitrary_sharding or len(t.source.list_shards(split)) >= num_shards
             for t in tasks)


class HostBatches:
  """This host's batches as numpy arrays, in order; `save` writes the position reached
  (the tf.data iterator's state: shuffle buffers, file offsets), `restore` continues from
  one, reading no example twice."""

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = iter(dataset)
    self.saveable = True  # False once tf.data said it cannot save this pipeline's state.

  def __iter__(self) -> 'HostBatches':
    return self

  def __next__(self) -> HostBatch:
    return {name: value.numpy() for name, value in next(self._iterator).items()}

  def save(self, prefix: str) -> bool:
    """Writes the position to `prefix`.index / .data-* (a local path or gs://); False when
    the pipeline holds state tf.data cannot save (a `tf.py_function` in a preprocessor)."""
    if self.saveable:
      try:
        tf.train.Checkpoint(iterator=self._iterator).write(prefix)
      except tf.errors.FailedPreconditionError as e:
        if 'stateful' not in str(e):
          raise
        self.saveable = False
    return self.saveable

  def restore(self, prefix: str) -> None:
    tf.train.Checkpoint(iterator=self._iterator).read(prefix).assert_consumed()


def host_batches(config: DataConfig, shard_index: int, num_shards: int,
                 start_step: int = 0, num_epochs: Optional[int] = None,
                 position: Optional[str] = None) -> HostBatches:
  """This host's share of each global batch, from batch `start_step` on.

  The order depends only on `config` (seed included) and the number of hosts, so batch k
  is the same whether a run reaches it directly or resumes at it. Resuming restores the
  `position` saved at `start_step` (`HostBatches.save`), which costs the same at any step;
  without one it replays the `start_step` batches before (tf.data's `skip`: every example
  read and preprocessed again, 10-20 s per 1,000 steps of batch 32 on 2 CPU cores).

  Each host reads only its seqio shard (`ShardInfo`: files or TFDS shards); a source that
  cannot be split that way (a `FunctionDataSource`, fewer files than hosts) is read whole
  by every host in the same seeded order, and each keeps every `num_shards`-th example.
  """
  task = get_task(config.mixture_or_task_name)
  if config.batch_size % num_shards:
    raise ValueError(f'BATCH_SIZE={config.batch_size} is not divisible by the {num_shards} '
                     'hosts; use a multiple.')
  at_source = num_shards == 1 or _sources_shard(task, config.split, num_shards)
  dataset = seqio.get_dataset(
      config.mixture_or_task_name, config.task_feature_lengths, dataset_split=config.split,
      shuffle=config.shuffle, num_epochs=num_epochs, seed=config.seed,
      shard_info=seqio.ShardInfo(shard_index, num_shards) if at_source else None,
      use_cached=config.use_cached,
      feature_converter=config.feature_converter or seqio.EncDecFeatureConverter(config.pack))
  if not at_source:
    dataset = dataset.shard(num_shards, shard_index)
  dataset = dataset.batch(config.batch_size // num_shards, drop_remainder=True)
  if position:
    batches = HostBatches(dataset)
    batches.restore(position)
    return batches
  return HostBatches(dataset.skip(start_step))
