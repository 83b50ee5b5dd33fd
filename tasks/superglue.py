"""SuperGLUE from TFDS (`super_glue/*:1.0.2`) in T5's text-to-text format, e.g.
`super_glue_rte_v102`:

  inputs  'rte hypothesis: <hypothesis> premise: <premise>'
  targets 'entailment' or 'not_entailment'

Tasks: super_glue_{boolq, cb, copa, multirc, record, rte, wic, wsc, wsc.fixed, axb, axg}_v102,
each with a `_taskless` twin whose inputs lack the task name. As in T5: fields in
alphabetical order (MultiRC: question, answer, paragraph, its HTML removed; WiC: sentence1,
sentence2, word); the diagnostics AX-b and AX-g (test split only) are cast as RTE; WSC marks
the noun phrase with * and the pronoun with # and asks True / False; ReCoRD makes one example
per answer, and its metric counts each query once. Metrics (x100): CB mean 3-class F1 and
accuracy; MultiRC F1 over all answers and exact match per question; ReCoRD exact match and
token F1 (best answer), named `em` and `f1` as in T5; AX-b Matthews correlation; AX-g accuracy
and gender parity (the percentage of minimal pairs, examples 2k and 2k+1 that differ only in
the pronoun's gender, whose predictions agree); the rest accuracy.

Mixtures `super_glue_v102_examples_proportional` and its `_taskless` twin: the eight training
tasks (WSC as wsc.fixed), sampled in proportion to their training examples, each rate capped
at MIXING_RATE_CAP (T5's examples-proportional mixing; no rate reaches the cap). They are not
T5's `super_glue_v102_proportional`, hence the other name: T5's trains WSC as
`super_glue_wsc_v102_simple_train` (259 examples: the referent's text as target) plus DPR
(`dpr_v001_simple`, 1,322), neither registered here, weights ReCoRD 138,854 (one example per
answer) where this counts its 100,730 queries, and lists the eval-only AX-b, AX-g and
`super_glue_wsc_v102_simple_eval` at rate 0.
Locations: see `tasks/tfds_tasks.py`.
"""

import seqio

from tasks import metrics
from tasks import postprocessors
from tasks import text_formats
from tasks import tfds_tasks

VERSION = '1.0.2'
SPLITS = ('train', 'validation', 'test')
BINARY = ('False', 'True')
ENTAILMENT = ('entailment', 'not_entailment')
NLI = (('hypothesis', 'hypothesis'), ('premise', 'premise'))
MIXTURE = 'super_glue_v102_examples_proportional'
MIXING_RATE_CAP = 2**19
# Training examples per mixture task (TFDS super_glue 1.0.2 train splits; ReCoRD counts
# queries, MultiRC answer options).
TRAIN_EXAMPLES = {'boolq': 9427, 'cb': 250, 'copa': 400, 'multirc': 27243, 'record': 100730,
                  'rte': 2490, 'wic': 5428, 'wsc.fixed': 554}

# config: (prefix, fields, label names, metrics, splits); fields None: not a labelled_fields
# format.
TASKS = {
    'boolq': ('boolq', (('passage', 'passage'), ('question', 'question')), BINARY,
              (metrics.accuracy,), SPLITS),
    'cb': ('cb', NLI, ('entailment', 'contradiction', 'neutral'),
           (metrics.mean_class_f1(3), metrics.accuracy), SPLITS),
    'copa': ('copa', (('choice1', 'choice1'), ('choice2', 'choice2'), ('premise', 'premise'),
                      ('question', 'question')), ('choice1', 'choice2'),
             (metrics.accuracy,), SPLITS),
    'rte': ('rte', NLI, ENTAILMENT, (metrics.accuracy,), SPLITS),
    'wic': ('wic', (('sentence1', 'sentence1'), ('sentence2', 'sentence2'), ('word', 'word')),
            BINARY, (metrics.accuracy,), SPLITS),
    'axb': ('rte', (('hypothesis', 'sentence2'), ('premise', 'sentence1')), ENTAILMENT,
            (metrics.matthews_corrcoef,), ('test',)),
    'axg': ('rte', NLI, ENTAILMENT, (metrics.on_values(metrics.accuracy), metrics.gender_parity),
            ('test',)),
}
# AX-g's minimal pairs: examples 2k and 2k+1 (TFDS drops AX-g's pair_id; each pair is
# consecutive).
AXG_POSTPROCESSOR = postprocessors.grouped_label(ENTAILMENT,
                                                 lambda example: int(example['idx']) // 2)
MULTIRC_FIELDS = (('question', 'question'), ('answer', 'answer'), ('paragraph', 'paragraph'))


def task_name(config: str, taskless: bool = False) -> str:
  """'rte' -> 'super_glue_rte_v102' (or 'super_glue_rte_v102_taskless')."""
  return f'super_glue_{config}_v102' + (tfds_tasks.TASKLESS_SUFFIX if taskless else '')


def task_names() -> list[str]:
  """Every SuperGLUE task this module registers (mixtures aside)."""
  configs = [*TASKS, 'multirc', 'record', 'wsc', 'wsc.fixed']
  return [task_name(config, taskless) for taskless in (False, True) for config in configs]


def _register(taskless: bool):
  prefix = lambda name: None if taskless else name
  for config, (task, fields, labels, metric_fns, splits) in TASKS.items():
    postprocess_fn = (AXG_POSTPROCESSOR if config == 'axg' else
                      postprocessors.label_to_id(labels))
    tfds_tasks.add_task(
        task_name(config, taskless), f'super_glue/{config}:{VERSION}', splits,
        text_formats.labelled_fields(prefix(task), fields, labels), postprocess_fn,
        metric_fns, labels)
  tfds_tasks.add_task(
      task_name('multirc', taskless), f'super_glue/multirc:{VERSION}', SPLITS,
      text_formats.labelled_fields(prefix('multirc'), MULTIRC_FIELDS, BINARY, strip_html=True),
      postprocessors.multirc, (metrics.multirc_f1, metrics.multirc_exact_match), BINARY)
  tfds_tasks.add_task(
      task_name('record', taskless), f'super_glue/record:{VERSION}', SPLITS,
      text_formats.record(prefix('record')), postprocessors.record,
      (metrics.record_exact_match_and_f1,))
  for config in ('wsc', 'wsc.fixed'):
    tfds_tasks.add_task(
        task_name(config, taskless), f'super_glue/{config}:{VERSION}', SPLITS,
        text_formats.wsc(prefix('wsc')), postprocessors.label_to_id(BINARY),
        (metrics.accuracy,), BINARY)
  seqio.MixtureRegistry.add(
      MIXTURE + (tfds_tasks.TASKLESS_SUFFIX if taskless else ''),
      [(task_name(config, taskless), min(count, MIXING_RATE_CAP))
       for config, count in TRAIN_EXAMPLES.items()])


if task_name('rte') not in seqio.TaskRegistry.names():
  _register(taskless=False)
  _register(taskless=True)
