"""Prompt ensembles (the paper's §6): K prompts of one task answer together.

- Decoded answers: a majority vote (`vote`); a tie goes to the tied answer of the earliest
  prompt, in the order the prompts were given.
- Classification by rank: the label with the highest mean of the K log-likelihoods
  (`mean_log_likelihood`); a tie goes to the first label word.

`summary` turns the K prompts' metrics and the ensemble's into the table rows that
`table_text` prints and `plot` draws (each prompt, their mean, the best, the ensemble).
"""

import collections
from typing import Hashable, Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use('Agg')
from matplotlib import pyplot  # pylint: disable=g-import-not-at-top,wrong-import-position

SUMMARY_ROWS = ('mean', 'best', 'ensemble')  # Rows after the prompts' own (not prompt names).


def vote(answers: Sequence[Hashable]) -> Hashable:
  """The answer most of the K prompts gave (`answers` [K], in prompt order); of tied answers,
  the one the earliest prompt gave."""
  counts = collections.Counter(answers)
  most = max(counts.values())
  return next(answer for answer in answers if counts[answer] == most)


def mean_log_likelihood(scores: np.ndarray) -> int:
  """The label index with the highest mean log-likelihood over K prompts: scores [K, L] ->
  an index in [0, L); of tied labels, the first."""
  return int(np.argmax(np.mean(scores, axis=0)))


def summary(per_prompt: Mapping[str, Mapping[str, float]],
            ensemble: Mapping[str, float]) -> dict[str, dict[str, float]]:
  """{row: {metric: value}}: each prompt's metrics, their mean and best (highest) over the
  prompts, and the ensemble's (the metrics the ensemble has)."""
  metrics = list(next(iter(per_prompt.values())))
  values = {metric: [prompt[metric] for prompt in per_prompt.values()] for metric in metrics}
  return {**{name: dict(prompt) for name, prompt in per_prompt.items()},
          'mean': {metric: float(np.mean(v)) for metric, v in values.items()},
          'best': {metric: float(np.max(v)) for metric, v in values.items()},
          'ensemble': dict(ensemble)}


def table_text(task: str, rows: Mapping[str, Mapping[str, float]]) -> str:
  """`summary`'s rows as a Markdown table, a column per metric."""
  metrics = list(next(iter(rows.values())))
  lines = [f'| {task} | ' + ' | '.join(metrics) + ' |', '|---' * (len(metrics) + 1) + '|']
  for name, row in rows.items():
    cells = [f'{row[metric]:.2f}' if metric in row else '' for metric in metrics]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot(path: str, task: str, rows: Mapping[str, Mapping[str, float]]) -> None:
  """A PNG at `path`: one group of bars per metric, a bar per row of `summary`."""
  metrics = list(next(iter(rows.values())))
  width = 0.8 / len(rows)
  figure, axes = pyplot.subplots(figsize=(3 + 1.2 * len(metrics) * len(rows) / 3, 4))
  for number, (name, row) in enumerate(rows.items()):
    positions = np.arange(len(metrics)) + number * width
    heights = [row.get(metric, np.nan) for metric in metrics]
    bars = axes.bar(positions, heights, width, label=name,
                    hatch='//' if name == 'ensemble' else None)
    axes.bar_label(bars, fmt='%.1f', fontsize=7)
  axes.set_xticks(np.arange(len(metrics)) + width * (len(rows) - 1) / 2, metrics)
  axes.set_title(f'{task}: {len(rows) - len(SUMMARY_ROWS)} prompts and their ensemble')
  axes.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.0, 1.0))
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  pyplot.close(figure)
