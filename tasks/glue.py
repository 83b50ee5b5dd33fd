"""GLUE from TFDS (`glue/*:2.0.0`) in T5's text-to-text format, under T5's task names,
e.g. `glue_rte_v002`:

  inputs  'rte sentence1: <first sentence> sentence2: <second sentence>'
  targets 'entailment' or 'not_entailment'

Tasks: glue_{cola, sst2, mrpc, qqp, stsb, mnli, mnli_matched, mnli_mismatched, qnli, rte,
wnli, ax}_v002, each with a `_taskless` twin whose inputs lack the task name ('sentence1: ...').
`glue_ax_v002` is the diagnostic set (test split only), cast as MNLI as T5 does, with Matthews
correlation, as the GLUE leaderboard reports it.
Fields appear in T5's (alphabetical) order, targets are the TFDS label names, and STS-B's
score is rounded to 0.2 and written as text ('3.4'). Metrics as T5 reports them (x100):
CoLA Matthews correlation; MRPC and QQP F1 and accuracy; STS-B Pearson and Spearman;
the rest accuracy. `glue_mnli_v002` has the splits train, validation_matched,
validation_mismatched, test_matched, test_mismatched; the matched and mismatched tasks have
validation and test. Data and vocabulary locations: see `tasks/tfds_tasks.py`.

Paraphrase transfer (the paper's Table 2): `paraphrase_qqp` and `paraphrase_mrpc` share one
format, so a prompt trained on one can be evaluated on the other:

  inputs  'sentence1: <first> sentence2: <second>'  (QQP's question1, question2)
  targets 'not_equivalent' or 'equivalent'            (QQP's not_duplicate, duplicate)

with F1 and accuracy, splits train, validation and test.
"""

import seqio

from tasks import metrics
from tasks import postprocessors
from tasks import text_formats
from tasks import tfds_tasks

VERSION = '2.0.0'
SPLITS = ('train', 'validation', 'test')
MNLI_SPLITS = ('train', 'validation_matched', 'validation_mismatched', 'test_matched',
               'test_mismatched')
NLI = (('hypothesis', 'hypothesis'), ('premise', 'premise'))
SENTENCES = (('sentence1', 'sentence1'), ('sentence2', 'sentence2'))
NLI_LABELS = ('entailment', 'neutral', 'contradiction')
PARAPHRASE_LABELS = ('not_equivalent', 'equivalent')
# Task name: (TFDS config, fields) of the paraphrase tasks.
PARAPHRASE = {'paraphrase_qqp': ('qqp', (('sentence1', 'question1'), ('sentence2', 'question2'))),
              'paraphrase_mrpc': ('mrpc', SENTENCES)}

# config: (prefix, fields, label names, metrics, splits)
TASKS = {
    'cola': ('cola', (('sentence', 'sentence'),), ('unacceptable', 'acceptable'),
             (metrics.matthews_corrcoef,), SPLITS),
    'sst2': ('sst2', (('sentence', 'sentence'),), ('negative', 'positive'),
             (metrics.accuracy,), SPLITS),
    'mrpc': ('mrpc', SENTENCES, PARAPHRASE_LABELS, (metrics.f1, metrics.accuracy), SPLITS),
    'qqp': ('qqp', (('question1', 'question1'), ('question2', 'question2')),
            ('not_duplicate', 'duplicate'), (metrics.f1, metrics.accuracy), SPLITS),
    'mnli': ('mnli', NLI, NLI_LABELS, (metrics.accuracy,), MNLI_SPLITS),
    'mnli_matched': ('mnli', NLI, NLI_LABELS, (metrics.accuracy,), ('validation', 'test')),
    'mnli_mismatched': ('mnli', NLI, NLI_LABELS, (metrics.accuracy,), ('validation', 'test')),
    'qnli': ('qnli', (('question', 'question'), ('sentence', 'sentence')),
             ('entailment', 'not_entailment'), (metrics.accuracy,), SPLITS),
    'rte': ('rte', SENTENCES, ('entailment', 'not_entailment'), (metrics.accuracy,), SPLITS),
    'wnli': ('wnli', SENTENCES, ('not_entailment', 'entailment'), (metrics.accuracy,), SPLITS),
    'ax': ('mnli', NLI, NLI_LABELS, (metrics.matthews_corrcoef,), ('test',)),
}


def task_names() -> list[str]:
  """Every GLUE task this module registers, the paraphrase tasks last."""
  names = [f'glue_{config}_v002' for config in (*TASKS, 'stsb')]
  return names + [name + tfds_tasks.TASKLESS_SUFFIX for name in names] + list(PARAPHRASE)


def _register():
  for taskless in (False, True):
    suffix = tfds_tasks.TASKLESS_SUFFIX if taskless else ''
    for config, (prefix, fields, labels, metric_fns, splits) in TASKS.items():
      tfds_tasks.add_task(
          f'glue_{config}_v002{suffix}', f'glue/{config}:{VERSION}', splits,
          text_formats.labelled_fields(None if taskless else prefix, fields, labels),
          postprocessors.label_to_id(labels), metric_fns, labels)
    tfds_tasks.add_task(
        f'glue_stsb_v002{suffix}', f'glue/stsb:{VERSION}', SPLITS,
        text_formats.stsb(None if taskless else 'stsb'), postprocessors.to_float,
        (metrics.pearson_corrcoef, metrics.spearman_corrcoef))
  for name, (config, fields) in PARAPHRASE.items():
    tfds_tasks.add_task(
        name, f'glue/{config}:{VERSION}', SPLITS,
        text_formats.labelled_fields(None, fields, PARAPHRASE_LABELS),
        postprocessors.label_to_id(PARAPHRASE_LABELS), (metrics.f1, metrics.accuracy),
        PARAPHRASE_LABELS)


if 'glue_rte_v002' not in seqio.TaskRegistry.names():
  _register()
