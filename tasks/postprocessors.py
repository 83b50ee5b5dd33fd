"""seqio postprocessors `fn(text, example=None, is_target=False)` for the paper's tasks.

Predictions and targets both pass through them before the metrics see them.
"""

from typing import Callable, Hashable, Optional, Sequence


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def label_to_id(label_names: Sequence[str]):
  """A postprocessor: label name -> its class index; any other text -> -1 (always wrong)."""
  names = list(label_names)

  def fn(text, example=None, is_target=False):
    del example, is_target
    text = _text(text)
    return names.index(text) if text in names else -1

  return fn


def to_float(text, example=None, is_target=False) -> float:
  """'3.4' -> 3.4 (STS-B); text that is not a number -> -1.0."""
  del example, is_target
  try:
    return float(_text(text))
  except ValueError:
    return -1.0


def grouped_label(label_names: Sequence[str], group_of: Callable[[dict], Hashable]):
  """A postprocessor: {'value': label index (or -1)}, plus for targets the example's group
  {'group': group_of(example)}, for metrics over groups of examples (metrics.on_values)."""
  to_id = label_to_id(label_names)

  def fn(text, example: Optional[dict] = None, is_target: bool = False) -> dict:
    result = {'value': to_id(text)}
    if is_target:
      result['group'] = group_of(example)
    return result

  return fn


# MultiRC: grouped by question (the grouping of its exact-match metric).
multirc = grouped_label(('False', 'True'),
                        lambda example: (int(example['idx/paragraph']),
                                         int(example['idx/question'])))


def answers(text, example: Optional[dict] = None, is_target: bool = False):
  """Question answering (MRQA): a prediction stays text; a target becomes the list of all
  the example's answers (its `answers` feature), any of which counts as right."""
  if not is_target:
    return _text(text)
  return [_text(answer) for answer in example['answers']]


def record(text, example: Optional[dict] = None, is_target: bool = False):
  """ReCoRD: a prediction stays text; a target becomes {'answers': all the query's answers,
  'group': (passage index, query index)}, since each answer is a separate example."""
  if not is_target:
    return _text(text)
  return {'answers': answers(text, example, is_target),
          'group': (int(example['idx/passage']), int(example['idx/query']))}
