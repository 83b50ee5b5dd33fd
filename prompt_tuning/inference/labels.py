"""The label words of classification tasks, registered beside their seqio tasks.

A task module calls `register_labels('my_task', ['negative', 'positive'])` next to
`seqio.TaskRegistry.add`; the evaluator then also rank-classifies the task (scores every
label word, predicts the best), and `gin/prompts/class_labels.gin` initialises the prompt
from the task's labels and target vocabulary without any other setting.
"""

import os
from typing import Optional, Sequence

import gin

from prompt_tuning.formats import hf_vocabulary
from prompt_tuning.model import initializers
from prompt_tuning.training import data

_LABELS: dict[str, tuple[str, ...]] = {}


def register_labels(task_name: str, labels: Sequence[str]) -> None:
  """Declares `labels` (the target texts, in a fixed order) as `task_name`'s classes."""
  if isinstance(labels, str) or len(labels) < 2 or len(set(labels)) != len(labels):
    raise ValueError(f'labels of task {task_name!r} must be a list of at least two distinct '
                     f'words, got {labels!r}.')
  _LABELS[task_name] = tuple(labels)


def labels_of(task_name: str) -> Optional[tuple[str, ...]]:
  """The registered label words of `task_name`, or None for a task that has none."""
  return _LABELS.get(task_name)


@gin.configurable
def task_labels(task_name: Optional[str] = None, task_modules: str | Sequence[str] = (),
                labels: Optional[Sequence[str]] = None) -> tuple[str, ...]:
  """`labels` (CLASS_LABELS) when given, else the labels registered for `task_name`."""
  if labels is not None:
    return _checked_override(labels)
  if not task_name:
    raise ValueError('class-label initialisation needs labels; set MIXTURE_OR_TASK_NAME to a '
                     'task with label words, or --gin.CLASS_LABELS="[...]".')
  data.import_task_modules(task_modules)
  data.get_task(task_name)
  registered = labels_of(task_name)
  if registered is None:
    raise ValueError(f'task {task_name!r} has no registered label words; call '
                     'prompt_tuning.inference.labels.register_labels in its module, or set '
                     '--gin.CLASS_LABELS="[...]".')
  return registered


def _checked_override(labels: Sequence[str]) -> tuple[str, ...]:
  """CLASS_LABELS as a tuple, refused unless it is a non-empty list of strings."""
  if (isinstance(labels, str) or not labels
      or not all(isinstance(label, str) for label in labels)):
    raise ValueError(f'CLASS_LABELS must be a non-empty list of label words, got {labels!r}; '
                     'set e.g. --gin.CLASS_LABELS="[\'negative\', \'positive\']", or None '
                     "for the task's registered labels.")
  return tuple(labels)


@gin.configurable
def label_vocabulary(path: Optional[str] = None, task_name: Optional[str] = None,
                     task_modules: str | Sequence[str] = ()) -> initializers.Vocabulary:
  """The vocabulary at `path` (VOCABULARY_PATH: a SentencePiece model, or a Hugging Face
  directory's tokenizer) if given, else the vocabulary of `task_name`'s targets."""
  if path and os.path.isdir(path):  # HfVocabulary says if it lacks a tokenizer.json.
    return hf_vocabulary.HfVocabulary(path)
  if path:
    return initializers.sentencepiece_vocabulary(path)
  if not task_name:
    raise ValueError('class-label initialisation needs a vocabulary; set '
                     '--gin.VOCABULARY_PATH or MIXTURE_OR_TASK_NAME.')
  data.import_task_modules(task_modules)
  return data.get_task(task_name).output_features['targets'].vocabulary
