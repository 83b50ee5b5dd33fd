"""Metric functions for seqio tasks: `fn(targets, predictions) -> {name: value}`."""

from typing import Sequence


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Percentage of predictions equal to their target (as T5 reports accuracy)."""
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} predictions.')
  return {'accuracy': 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}
