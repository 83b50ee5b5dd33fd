"""Many prompts, one frozen model: tasks evaluated and inferred together in shared batches,
and prompt ensembles (the paper's Fig. 2 "mixed-task inference" and §6).

`MultiPromptEvaluator` runs the prompts of a `prompt_bank.PromptBank` through the frozen model
without a prompt of its own (`EncoderDecoderModel.without_prompt`): each batch row is one
example with one prompt, `batch['prompt_ids']` [B] picking its row of the bank's table. The
rows of the tasks are interleaved (a row of task A, one of task B, ...), so every batch holds
several tasks; a task given K prompts sends each example through all K in consecutive rows.

Results equal evaluating each task alone with its prompt: seqio's metrics (decoding and
scoring), `task/rank_<metric>` for tasks with label words, the same predictions. A task with
K > 1 prompts is an ensemble (`ensemble.py`): the metrics of each prompt
(`task/<prompt>/<metric>`), of their mean and best (`task/mean/...`, `task/best/...`), and of
the ensemble (`task/ensemble/...`: the vote over decoded answers; for `rank_` metrics the
mean log-likelihood).
"""

from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.inference import ensemble
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import labels
from prompt_tuning.inference import prompt_bank
from prompt_tuning.model import models
from prompt_tuning.training import data
from prompt_tuning.training import partitioning

Params = Any


class MultiPromptEvaluator:
  """Evaluation and inference of `bank`'s prompts, prompt `name` on task `tasks[name]`.

  `frozen` are the frozen weights (placed on `batch_sharding`'s mesh) of `model` (built without
  a prompt); `config` gives the split, feature lengths and rows per batch.
  """

  def __init__(self, config: evaluation.EvalConfig, model: models.EncoderDecoderModel,
               frozen: Params, batch_sharding: Any, bank: prompt_bank.PromptBank,
               tasks: Mapping[str, str]):
    if config.batch_size <= 0:
      raise ValueError(f'EVAL_BATCH_SIZE={config.batch_size} must be positive.')
    self.config, self.frozen, self.bank, self.tasks = config, frozen, bank, dict(tasks)
    self.model = model
    self.task_prompts: dict[str, list[str]] = {}  # Task -> its prompts, in the bank's order.
    for name in bank.names:
      self.task_prompts.setdefault(self.tasks[name], []).append(name)
    for task, names in self.task_prompts.items():
      data.get_task(task)
      clashes = set(names) & set(ensemble.SUMMARY_ROWS) if len(names) > 1 else ()
      if clashes:
        raise ValueError(f'prompt name(s) {sorted(clashes)} of task {task} are the names of '
                         'ensemble rows; rename them.')
    mesh = batch_sharding.mesh
    self.batch_sharding = batch_sharding
    self.padded_size = evaluation.padded_size(config.batch_size, mesh)
    replicated = partitioning.replicated(mesh)
    self.table = jax.device_put(bank.table(), replicated)
    self._predict = jax.jit(lambda table, frozen, batch: model.predict_batch(
        frozen, batch, max_decode_length=config.task_feature_lengths['targets'],
        prompt_table=table)[0], out_shardings=replicated)
    self._score = jax.jit(lambda table, frozen, batch: model.score_batch(
        frozen, batch, prompt_table=table), out_shardings=replicated)
    self._seqio: dict[str, seqio.Evaluator] = {}

  def _evaluator(self, task: str) -> seqio.Evaluator:
    """seqio's evaluator of `task` alone (its examples, targets and metrics), made once."""
    if task not in self._seqio:
      self._seqio[task] = evaluation.seqio_evaluator(self.config, task,
                                                     self.model.feature_converter())
    return self._seqio[task]

  def _examples(self, task: str) -> list[dict]:
    return list(self._evaluator(task).cached_task_datasets[task].as_numpy_iterator())

  def _rows(self, number: int, task: str,
            label_targets: Optional[Sequence[Sequence[int]]] = None) -> tf.data.Dataset:
    """(key [4] = (task `number`, example, prompt slot, label), `model.make_rows` features
    with `prompt_ids`) for every example of `task` with each of its K prompts: K rows of
    the example's own targets, or K * L rows of the L label words' `label_targets` in their
    place (rank classification)."""
    ids = self.bank.ids(self.task_prompts[task])
    examples = self._examples(task)
    options = [label_targets or [example['targets']] for example in examples]
    keys = np.array([(number, index, slot, label) for index, targets in enumerate(options)
                     for slot in range(len(ids)) for label in range(len(targets))],
                    np.int32).reshape(-1, 4)
    rows = self.model.make_rows([examples[index]['inputs'] for index in keys[:, 1]],
                                [options[index][label] for index, label in keys[:, [1, 3]]],
                                self.config.task_feature_lengths)
    return tf.data.Dataset.from_tensor_slices((keys, {**rows, 'prompt_ids': ids[keys[:, 2]]}))

  def _run(self, fn, datasets: Sequence[tf.data.Dataset]) -> dict[tuple, np.ndarray]:
    """{key: output} of `fn` over the rows of `datasets`, interleaved into shared batches."""
    if not datasets:
      return {}
    mixed = datasets[0] if len(datasets) == 1 else tf.data.Dataset.choose_from_datasets(
        datasets, tf.data.Dataset.range(len(datasets)).repeat(), stop_on_empty_dataset=False)
    outputs = {}
    for keys, features, real in evaluation.batches(mixed, self.config.batch_size,
                                                   self.padded_size):
      result = jax.device_get(fn(self.table, self.frozen,
                                 jax.device_put(features, self.batch_sharding)))
      outputs.update(zip(map(tuple, keys.tolist()), np.asarray(result)[:real]))
    return outputs

  def _run_tasks(self, fn, wanted, targets_of=lambda task: None) -> dict[tuple, np.ndarray]:
    """`_run` over the rows of every task for which `wanted(seqio task)` holds."""
    return self._run(fn, [self._rows(number, task, targets_of(task))
                          for number, task in enumerate(self.task_prompts)
                          if wanted(data.get_task(task))])

  def _label_targets(self, task: str) -> list[list[int]]:
    return evaluation.label_targets(data.get_task(task), labels.labels_of(task),
                                    self.config.task_feature_lengths['targets'])

  def evaluate(self, step: Optional[int] = None) -> dict[str, float]:
    """Every task's metrics (see the module docstring), all tasks in shared batches."""
    decoded = self._run_tasks(self._predict, lambda task: task.predict_metric_fns)
    scored = self._run_tasks(self._score, lambda task: task.score_metric_fns)
    ranked = self._run_tasks(self._score, lambda task: labels.labels_of(task.name),
                             self._label_targets)
    results = {}
    for number, (task_name, names) in enumerate(self.task_prompts.items()):
      results.update(self._task_metrics(number, task_name, names, (decoded, scored, ranked),
                                        step))
    return results

  def _task_metrics(self, number: int, task_name: str, names: list[str], found: tuple,
                    step: Optional[int]) -> dict[str, float]:
    """Task `number`'s metrics from the outputs `found` (decoded, scored, ranked: {key:
    output}) of its rows: one prompt's, or an ensemble's rows (module docstring)."""
    task, examples = data.get_task(task_name), self._examples(task_name)
    words = labels.labels_of(task_name) or ()
    slots = range(len(names))

    def outputs(outputs_of, wanted):  # [example][slot] outputs, or None if not computed.
      return [[outputs_of[number, i, k, 0] for k in slots] for i in range(len(examples))
              ] if wanted else None

    tokens = outputs(found[0], task.predict_metric_fns)
    scores = outputs(found[1], task.score_metric_fns)
    label_scores = np.array([[[found[2][number, i, k, label] for label in range(len(words))]
                              for k in slots] for i in range(len(examples))])  # [n, K, L]
    pick = lambda rows, choose: [] if rows is None else [(i, choose(row))
                                                         for i, row in enumerate(rows)]
    per_prompt = {name: self._metrics(
        task, examples, step, pick(tokens, lambda row, k=k: row[k]), pick(scores, lambda row, k=k: row[k]),
        [words[i] for i in label_scores[:, k].argmax(axis=1)] if words else [])
                  for k, name in enumerate(names)}
    if len(names) == 1:
      return per_prompt[names[0]]
    together = self._metrics(
        task, examples, step, pick(tokens, self._vote), pick(scores, lambda row: float(np.mean(row))),
        [words[ensemble.mean_log_likelihood(row)] for row in label_scores] if words else [])
    rows = ensemble.summary({name: _metric_names(metrics, task_name)
                             for name, metrics in per_prompt.items()},
                            _metric_names(together, task_name))
    return {f'{task_name}/{row}/{metric}': value for row, metrics in rows.items()
            for metric, value in metrics.items()}

  def _metrics(self, task: seqio.Task, examples: list[dict], step: Optional[int],
               predictions: list, scores: list, ranked_words: list[str]) -> dict[str, float]:
    """`task`'s metrics, {'task/metric': value}: seqio's for (example index, tokens)
    `predictions` and (index, score) `scores`, and the rank metrics of `ranked_words` for its
    `examples`."""
    metrics = {}
    if predictions or scores:
      all_metrics, _ = self._evaluator(task.name).evaluate(
          compute_metrics=True, step=step, predict_fn=lambda dataset: predictions,
          score_fn=lambda dataset: scores)
      metrics = {f'{name}/{metric}': float(value)
                 for name, task_metrics in all_metrics.result().items()
                 for metric, value in task_metrics.items()}
    if ranked_words:
      metrics.update(evaluation.rank_metrics(task, examples, ranked_words))
    return metrics

  @staticmethod
  def _vote(answers: Sequence[np.ndarray]) -> np.ndarray:
    """The decoded tokens [T] most of the K prompts gave (`ensemble.vote`'s tie rule)."""
    return np.array(ensemble.vote([tuple(answer.tolist()) for answer in answers]), np.int32)

  def predictions(self) -> Iterator[dict]:
    """Every prompt's decoded predictions on its task's examples, as {'task': prompt name,
    'seqio_task', 'inputs', 'targets', 'prediction'}, task by task, in example order; for a
    task of K > 1 prompts, then the ensemble's: {'task': 'ensemble', 'prompts': [K names],
    ...} with the vote of the K predictions."""
    decoded = self._run_tasks(self._predict, lambda task: True)
    for number, (task_name, names) in enumerate(self.task_prompts.items()):
      vocabulary = data.get_task(task_name).output_features['targets'].vocabulary
      examples = self._examples(task_name)
      answers = [[decoded[number, i, slot, 0] for slot in range(len(names))]
                 for i in range(len(examples))]
      rows = [({'task': name}, [answer[slot] for answer in answers])
              for slot, name in enumerate(names)]
      if len(names) > 1:
        rows.append(({'task': 'ensemble', 'prompts': names}, list(map(self._vote, answers))))
      for fields, tokens in rows:
        for example, example_tokens in zip(examples, tokens):
          yield {**fields, 'seqio_task': task_name,
                 'inputs': evaluation.pretokenized_text(example, 'inputs'),
                 'targets': evaluation.pretokenized_text(example, 'targets'),
                 'prediction': vocabulary.decode(example_tokens.tolist())}

  def predict_texts(self, requests: Sequence[tuple[str, str]]) -> list[str]:
    """(prompt name, input text) pairs -> each one's decoded prediction, in order. Inputs are
    tokenised with the vocabulary of the prompt's task and cut to TASK_FEATURE_LENGTHS
    (keeping room for EOS), as seqio does."""
    lengths = self.config.task_feature_lengths
    ids = self.bank.ids([name for name, _ in requests])
    inputs = []
    for name, text in requests:
      feature = data.get_task(self.tasks[name]).output_features['inputs']
      tokens = list(feature.vocabulary.encode(text))[:lengths['inputs'] - feature.add_eos]
      inputs.append(tokens + [feature.vocabulary.eos_id] * feature.add_eos)
    keys = np.stack([np.zeros(len(requests), np.int32), np.arange(len(requests), dtype=np.int32),
                     np.zeros_like(ids), np.zeros_like(ids)], axis=1)
    rows = tf.data.Dataset.from_tensor_slices(
        (keys, {**self.model.make_rows(inputs, [[]] * len(requests), lengths),
                'prompt_ids': ids}))
    decoded = self._run(self._predict, [rows])
    return [data.get_task(self.tasks[name]).output_features['targets'].vocabulary.decode(
        decoded[0, row, 0, 0].tolist()) for row, (name, _) in enumerate(requests)]


def _metric_names(metrics: Mapping[str, float], task: str) -> dict[str, float]:
  """{'task/metric': v} -> {'metric': v}."""
  return {key[len(task) + 1:]: value for key, value in metrics.items()}
