"""Metric functions for seqio tasks: `fn(targets, predictions) -> {name: value}`."""

import collections
import re
import string
from typing import Sequence

import numpy as np
import scipy.stats


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Percentage of predictions equal to their target (as T5 reports accuracy)."""
  _check_lengths(targets, predictions)
  return {'accuracy': 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


def _pair(targets: Sequence, predictions: Sequence) -> tuple[np.ndarray, np.ndarray]:
  _check_lengths(targets, predictions)
  return np.asarray(targets), np.asarray(predictions)


def f1(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """F1 (x100) of class 1 against class 0; an invalid prediction (-1) counts as wrong."""
  targets, predictions = _pair(targets, predictions)
  predictions = np.where(np.isin(predictions, (0, 1)), predictions, 1 - targets)
  true_positives = np.sum((predictions == 1) & (targets == 1))
  predicted, actual = np.sum(predictions == 1), np.sum(targets == 1)
  if not true_positives:
    return {'f1': 0.0}
  return {'f1': 100.0 * 2 * true_positives / (predicted + actual)}


def mean_class_f1(num_classes: int):
  """Metric: the unweighted mean over classes 0..num_classes-1 of each class's F1 (x100),
  as `mean_<n>class_f1` (CB: 3 classes). An invalid prediction (-1) is a miss of its target."""

  def fn(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    targets, predictions = _pair(targets, predictions)
    scores = []
    for c in range(num_classes):
      hits = np.sum((predictions == c) & (targets == c))
      total = np.sum(predictions == c) + np.sum(targets == c)
      scores.append(2 * hits / total if total else 0.0)
    return {f'mean_{num_classes}class_f1': 100.0 * float(np.mean(scores))}

  return fn


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation (x100), multiclass form (Gorodkin, 2004); 0 when undefined."""
  targets, predictions = _pair(targets, predictions)
  classes = np.union1d(targets, predictions)
  confusion = np.array([[np.sum((targets == t) & (predictions == p)) for p in classes]
                        for t in classes], np.float64)
  n, correct = confusion.sum(), np.trace(confusion)
  true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
  covariance = correct * n - true_counts @ predicted_counts
  scale = np.sqrt((n**2 - predicted_counts @ predicted_counts) *
                  (n**2 - true_counts @ true_counts))
  return {'matthews_corrcoef': 100.0 * covariance / scale if scale else 0.0}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Pearson correlation (x100)."""
  targets, predictions = _pair(targets, predictions)
  return {'pearson_corrcoef': 100.0 * float(scipy.stats.pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Spearman rank correlation (x100)."""
  targets, predictions = _pair(targets, predictions)
  return {'spearman_corrcoef': 100.0 * float(scipy.stats.spearmanr(targets, predictions)[0])}


def on_values(metric_fn):
  """`metric_fn` on the 'value' of each target and prediction: the dicts that
  `postprocessors.grouped_label` makes."""

  def fn(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
    return metric_fn([t['value'] for t in targets], [p['value'] for p in predictions])

  return fn


multirc_f1 = on_values(f1)  # MultiRC's F1a: binary F1 over all answer options.


def _by_group(targets: Sequence[dict], predictions: Sequence[dict]) -> list[list[tuple]]:
  """(target value, prediction value) pairs, one list per target 'group', in order."""
  _check_lengths(targets, predictions)
  groups = collections.defaultdict(list)
  for target, prediction in zip(targets, predictions):
    groups[target['group']].append((target['value'], prediction['value']))
  return list(groups.values())


def multirc_exact_match(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
  """MultiRC's EM: the percentage of questions whose answer options are all right."""
  questions = _by_group(targets, predictions)
  return {'exact_match': 100.0 * float(np.mean([all(t == p for t, p in question)
                                                for question in questions]))}


def gender_parity(targets: Sequence[dict], predictions: Sequence[dict]) -> dict[str, float]:
  """AX-g's gender parity (x100): the percentage of minimal pairs (the targets' 'group')
  whose examples got the same prediction, right or wrong."""
  pairs = _by_group(targets, predictions)
  return {'gender_parity': 100.0 * float(np.mean([len({p for _, p in pair}) == 1
                                                  for pair in pairs]))}


def _normalize_answer(text: str) -> list[str]:
  """SQuAD's normalisation: lower case, no punctuation or articles, split on whitespace."""
  text = ''.join(c for c in text.lower() if c not in string.punctuation)
  return re.sub(r'\b(a|an|the)\b', ' ', text).split()


def _token_f1(prediction: list[str], answer: list[str]) -> float:
  common = sum((collections.Counter(prediction) & collections.Counter(answer)).values())
  if not common:
    return 0.0
  precision, recall = common / len(prediction), common / len(answer)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD's exact match and token F1 (x100), each prediction against the best of its
  example's answers (`postprocessors.answers`), after SQuAD's answer normalisation."""
  _check_lengths(targets, predictions)
  exact, token_f1 = [], []
  for answers, prediction in zip(targets, predictions):
    words = _normalize_answer(prediction)
    exact.append(max((words == _normalize_answer(a) for a in answers), default=False))
    token_f1.append(max((_token_f1(words, _normalize_answer(a)) for a in answers), default=0.0))
  return {'exact_match': 100.0 * float(np.mean(exact)), 'f1': 100.0 * float(np.mean(token_f1))}


def record_exact_match_and_f1(targets: Sequence[dict], predictions: Sequence[str]) -> dict:
  """ReCoRD's EM and token F1 (x100), each the best over the query's answers, averaged over
  queries: the copies of a query (one per answer, postprocessors.record) count once. Named
  `em` and `f1`, as T5's super_glue_record_v102 reports them (its deduplicated SQuAD metric)."""
  _check_lengths(targets, predictions)
  queries = {}
  for target, prediction in zip(targets, predictions):
    queries.setdefault(target['group'], (target['answers'], prediction))
  scores = squad([answers for answers, _ in queries.values()],
                 [prediction for _, prediction in queries.values()])
  return {'em': scores['exact_match'], 'f1': scores['f1']}
