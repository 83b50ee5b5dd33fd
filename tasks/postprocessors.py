"""seqio postprocessors `fn(text, example=None, is_target=False)` for GLUE and SuperGLUE.

Predictions and targets both pass through them before the metrics see them.
"""

from typing import Optional, Sequence


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


def multirc(text, example: Optional[dict] = None, is_target: bool = False) -> dict:
  """MultiRC: {'value': 0 / 1 / -1}, plus the answer's question for targets (the grouping
  of the exact-match metric): {'group': (paragraph index, question index)}."""
  result = {'value': label_to_id(['False', 'True'])(text)}
  if is_target:
    result['group'] = (int(example['idx/paragraph']), int(example['idx/question']))
  return result


def record(text, example: Optional[dict] = None, is_target: bool = False):
  """ReCoRD: a prediction stays text; a target becomes {'answers': all the query's answers,
  'group': (passage index, query index)}, since each answer is a separate example."""
  if not is_target:
    return _text(text)
  return {'answers': [_text(answer) for answer in example['answers']],
          'group': (int(example['idx/passage']), int(example['idx/query']))}
