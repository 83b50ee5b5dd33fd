"""seqio evaluation: decoding (`predict_fn`) and rank scoring (`score_fn`) on a mesh."""

import dataclasses
import functools
from typing import Any, Iterator, Mapping, Optional

import gin
import jax
import numpy as np
import seqio

from prompt_tuning import data
from prompt_tuning import models
from prompt_tuning import trainer

Params = Any


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate on, and how often during training."""
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = 'validation'
  batch_size: int = 32
  period: int = 1000  # Evaluate every `period` train steps (0: only before and after).
  num_examples: Optional[int] = None  # None: the whole split.


def _batches(dataset, batch_size: int) -> Iterator[tuple[np.ndarray, dict, int]]:
  """(indices [B], features, number of real rows), the last batch padded to B."""
  for indices, features in dataset.batch(batch_size).as_numpy_iterator():
    real = len(indices)
    pad = lambda x: np.pad(x, [(0, batch_size - real)] + [(0, 0)] * (x.ndim - 1))
    yield indices, {k: pad(v) for k, v in features.items()}, real


class Evaluator:
  """Runs a `seqio.Evaluator` with jitted decoding and scoring of `trainable + frozen`."""

  def __init__(self, config: EvalConfig, model: models.EncoderDecoderModel,
               batch_sharding: Any):
    self.config = config
    data.get_task(config.mixture_or_task_name)
    self.evaluator = seqio.Evaluator(
        config.mixture_or_task_name, feature_converter=data.feature_converter(),
        eval_split=config.split, sequence_length=dict(config.task_feature_lengths),
        num_examples=config.num_examples, use_memory_cache=True)
    self.batch_sharding = batch_sharding
    merged = lambda fn: lambda trainable, frozen, batch: fn(
        trainer.merge_params(trainable, frozen), batch)
    self._predict = jax.jit(merged(lambda params, batch: model.predict_batch(params, batch)[0]))
    self._score = jax.jit(merged(model.score_batch))

  def _run(self, fn, dataset, trainable, frozen):
    outputs = []
    for indices, features, real in _batches(dataset, self.config.batch_size):
      batch = jax.device_put(features, self.batch_sharding)
      result = np.asarray(jax.device_get(fn(trainable, frozen, batch)))[:real]
      outputs.extend(zip(indices.tolist(), result.tolist()))
    return outputs

  def evaluate(self, trainable: Params, frozen: Params, step: int) -> dict[str, float]:
    """Metrics as {'task/metric': value}."""
    run = functools.partial(self._run, trainable=trainable, frozen=frozen)
    all_metrics, _ = self.evaluator.evaluate(
        compute_metrics=True, step=step, predict_fn=lambda ds: run(self._predict, ds),
        score_fn=lambda ds: run(self._score, ds))
    return {f'{task}/{name}': float(value) for task, metrics in all_metrics.result().items()
            for name, value in metrics.items()}

  def predictions(self, trainable: Params, frozen: Params) -> Iterator[dict]:
    """Decoded predictions of every example, as {'inputs', 'targets', 'prediction'} texts."""
    for task in self.evaluator.eval_tasks:
      vocab = task.output_features['targets'].vocabulary
      dataset = self.evaluator.cached_model_datasets[task.name]
      examples = list(self.evaluator.cached_task_datasets[task.name].as_numpy_iterator())
      for index, tokens in sorted(self._run(self._predict, dataset, trainable, frozen)):
        example = examples[index]
        yield {'task': task.name,
               'inputs': example.get('inputs_pretokenized', b'').decode(),
               'targets': example.get('targets_pretokenized', b'').decode(),
               'prediction': vocab.decode(tokens)}

