"""seqio evaluation on a mesh: decoding (`predict_fn`), scoring (`score_fn`), and rank
classification of tasks with registered label words (`labels.register_labels`)."""

import dataclasses
import functools
from typing import Any, Iterator, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.inference import labels
from prompt_tuning.model import models
from prompt_tuning.training import data
from prompt_tuning.training import partitioning
from prompt_tuning.training import preflight
from prompt_tuning.training import trainer

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


def batches(dataset, batch_size: int,
            padded_size: int) -> Iterator[tuple[np.ndarray, dict, int]]:
  """(indices [B], features [padded_size, ...], number of real rows): batches of
  `batch_size` examples, each zero-padded to `padded_size` rows (so that it splits over
  the mesh's data axis); the padding rows are dropped from every output."""
  for indices, features in dataset.batch(batch_size).as_numpy_iterator():
    real = len(indices)
    pad = lambda x: np.pad(x, [(0, padded_size - real)] + [(0, 0)] * (x.ndim - 1))
    yield indices, {k: pad(v) for k, v in features.items()}, real


def seqio_evaluator(config: EvalConfig, mixture_or_task_name: str,
                    feature_converter: seqio.FeatureConverter) -> seqio.Evaluator:
  """seqio's evaluator of a task or mixture on `config`'s split, lengths and examples, in
  the model's batches (`model.feature_converter()`)."""
  return seqio.Evaluator(
      mixture_or_task_name, feature_converter=feature_converter, eval_split=config.split,
      sequence_length=dict(config.task_feature_lengths), num_examples=config.num_examples,
      use_memory_cache=True)


def padded_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """`batch_size` rounded up to a multiple of the mesh's data-parallel size."""
  ways = preflight.data_parallel_size(mesh)
  return -(-batch_size // ways) * ways


def label_targets(task: seqio.Task, words: Sequence[str], length: int) -> list[list[int]]:
  """Each label word's target tokens (+ EOS), at most `length` of them."""
  feature = task.output_features['targets']
  targets = []
  for word in words:
    ids = list(feature.vocabulary.encode(word)) + [feature.vocabulary.eos_id] * feature.add_eos
    if len(ids) > length:
      raise ValueError(f'label {word!r} of task {task.name!r} is {len(ids)} tokens but '
                       f"TASK_FEATURE_LENGTHS['targets'] is {length}; raise it.")
    targets.append(ids)
  return targets


def rank_rows(model: models.EncoderDecoderModel, examples: Sequence[Mapping[str, Any]],
              targets: Sequence[Sequence[int]],
              task_feature_lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
  """Each example's inputs once per label word's `targets` (example-major): `model.make_rows`
  of N * L rows."""
  return model.make_rows([example['inputs'] for example in examples for _ in targets],
                         [target for _ in examples for target in targets], task_feature_lengths)


def rank_metrics(task: seqio.Task, examples: Sequence[dict],
                 predicted_words: Sequence[str]) -> dict[str, float]:
  """`task`'s metrics of the label words predicted for its `examples` (in order), as
  {'task/rank_metric': value}."""
  targets = [task.postprocess_fn(pretokenized_text(example, 'targets'), example=example,
                                 is_target=True) for example in examples]
  predictions = [task.postprocess_fn(word, example=example, is_target=False)
                 for word, example in zip(predicted_words, examples)]
  return {f'{task.name}/rank_{name}': float(value) for metric_fn in task.predict_metric_fns
          for name, value in metric_fn(targets, predictions).items()}


def pretokenized_text(example: Mapping[str, Any], feature: str) -> str:
  """An example's text of `feature` before tokenisation ('' if seqio did not keep it)."""
  return example.get(f'{feature}_pretokenized', b'').decode()


class Evaluator:
  """Runs a `seqio.Evaluator` with jitted decoding and scoring of `trainable + frozen`, and
  rank-classifies every task with registered label words (metrics `task/rank_<metric>`).

  With several processes, each reads the whole eval split and feeds the same batches (the
  devices of all hosts share each one); outputs are replicated, so every host computes the
  same metrics and process 0 reports them.
  """

  def __init__(self, config: EvalConfig, model: models.EncoderDecoderModel,
               batch_sharding: Any):
    self.config = config
    if config.batch_size <= 0:
      raise ValueError(f'EVAL_BATCH_SIZE={config.batch_size} must be positive.')
    data.get_task(config.mixture_or_task_name)
    self.model = model
    self.evaluator = seqio_evaluator(config, config.mixture_or_task_name,
                                     model.feature_converter())
    self.batch_sharding = batch_sharding
    self.padded_size = padded_size(config.batch_size, batch_sharding.mesh)
    merged = lambda fn: lambda trainable, frozen, batch: fn(
        trainer.merge_params(trainable, frozen), batch)
    # Outputs on every device, so every process (host) reads them whole.
    replicated = partitioning.replicated(batch_sharding.mesh)
    self._predict = jax.jit(merged(lambda params, batch: model.predict_batch(
        params, batch, max_decode_length=config.task_feature_lengths['targets'])[0]),
                            out_shardings=replicated)
    self._score = jax.jit(merged(model.score_batch), out_shardings=replicated)

  def _run(self, fn, dataset, trainable, frozen):
    outputs = []
    for indices, features, real in batches(dataset, self.config.batch_size, self.padded_size):
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
    results = {f'{task}/{name}': float(value) for task, metrics in all_metrics.result().items()
               for name, value in metrics.items()}
    for task in self.evaluator.eval_tasks:
      if labels.labels_of(task.name):
        results.update(self._rank_metrics(task, trainable, frozen))
    return results

  def rank_predictions(self, task: seqio.Task, trainable: Params, frozen: Params) -> list[str]:
    """The label word with the highest `score_batch` for each example of `task`, in order."""
    label_words = labels.labels_of(task.name)
    lengths = self.config.task_feature_lengths
    examples = self._examples(task)
    rows = rank_rows(self.model, examples, label_targets(task, label_words, lengths['targets']),
                     lengths)
    pairs = tf.data.Dataset.from_tensor_slices(
        (np.repeat(np.arange(len(examples)), len(label_words)), rows))
    scores = np.array([score for _, score in self._run(self._score, pairs, trainable, frozen)])
    return [label_words[i] for i in scores.reshape(-1, len(label_words)).argmax(axis=1)]

  def _examples(self, task: seqio.Task) -> list[dict]:
    """The task's preprocessed eval examples, in evaluation order."""
    return list(self.evaluator.cached_task_datasets[task.name].as_numpy_iterator())

  def _rank_metrics(self, task: seqio.Task, trainable: Params,
                    frozen: Params) -> dict[str, float]:
    """The task's metrics on rank-classified predictions, as {'task/rank_metric': value}."""
    return rank_metrics(task, self._examples(task), self.rank_predictions(task, trainable, frozen))

  def predictions(self, trainable: Params, frozen: Params) -> Iterator[dict]:
    """Decoded predictions of every example, as {'inputs', 'targets', 'prediction'} texts."""
    for task in self.evaluator.eval_tasks:
      vocab = task.output_features['targets'].vocabulary
      dataset = self.evaluator.cached_model_datasets[task.name]
      examples = self._examples(task)
      for index, tokens in sorted(self._run(self._predict, dataset, trainable, frozen)):
        example = examples[index]
        yield {'task': task.name, 'inputs': pretokenized_text(example, 'inputs'),
               'targets': pretokenized_text(example, 'targets'),
               'prediction': vocab.decode(tokens)}

