r"""Prints a few preprocessed examples of a seqio task, to check its format before a run.

    python -m prompt_tuning.show_task my_task --module=my_tasks --split=validation \
      --num_examples=3

For each example: every feature's text (before tokenisation) and token ids (after the
task's preprocessors, EOS included), then the task's label words if it has any.
"""

from typing import Sequence

from absl import flags

from prompt_tuning import gin_config
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import labels
from prompt_tuning.training import data

_MODULE = flags.DEFINE_multi_string('module', [], 'Module(s) that register the task.')
_SPLIT = flags.DEFINE_string('split', 'validation', 'The split to read.')
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 3, 'How many examples to print.')


def describe(task_name: str, split: str = 'validation', num_examples: int = 3,
             modules: Sequence[str] = ()) -> str:
  """The first `num_examples` preprocessed examples of `split`, as text and token ids."""
  data.import_task_modules(modules)
  task = data.get_task(task_name)
  if split not in task.splits:
    raise ValueError(f'task {task_name!r} has no split {split!r}; choose one of '
                     f'{", ".join(task.splits)} with --split.')
  dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False)
  lines = []
  for number, example in enumerate(dataset.take(num_examples).as_numpy_iterator(), start=1):
    lines.append(f'example {number}:')
    for name in task.output_features:
      ids = example[name].tolist()
      lines += [f'  {name}: {evaluation.pretokenized_text(example, name)!r}',
                f'  {name} ids ({len(ids)}): {ids}']
  label_words = labels.labels_of(task_name)
  lines.append(f'label words: {list(label_words)}' if label_words else
               'label words: none registered (no rank classification)')
  return '\n'.join(lines)


def main(argv):
  if len(argv) != 2:
    raise ValueError('usage: python -m prompt_tuning.show_task TASK_NAME [--module=my_tasks] '
                     '[--split=validation] [--num_examples=3] [--tfds_data_dir=DIR]')
  gin_config.apply_tfds_data_dir()
  print(describe(argv[1], _SPLIT.value, _NUM_EXAMPLES.value, _MODULE.value))


if __name__ == '__main__':
  gin_config.run(main)
