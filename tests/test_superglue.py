"""SuperGLUE tasks and mixtures: T5's text formats on handwritten examples and batches from
mock TFDS data."""

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import test_glue  # First: it points T5_VOCABULARY_PATH at the test vocabulary.
from prompt_tuning.inference import labels
from tasks import postprocessors
from tasks import superglue
from tasks import text_formats


@pytest.mark.parametrize('name', superglue.task_names())
def test_every_task_makes_batches(name):
  split = 'test' if '_ax' in name else 'train'
  test_glue.check_batch(test_glue.one_batch(name, split))


@pytest.mark.parametrize('name', superglue.task_names())
def test_every_classification_task_has_label_words(name):
  """Rank classification and class-label prompts need them; ReCoRD picks an entity of its
  passage instead (no fixed label words)."""
  words = labels.labels_of(name)
  assert bool(words) == ('_record_' not in name), (name, words)


@pytest.mark.parametrize('taskless', [False, True])
def test_mixtures_make_batches_with_proportional_rates(taskless):
  suffix = '_taskless' if taskless else ''
  mixture = seqio.get_mixture_or_task(f'super_glue_v102_examples_proportional{suffix}')
  rates = {task.name: mixture.get_rate(task) for task in mixture.tasks}
  assert rates == {superglue.task_name(config, taskless): count
                   for config, count in superglue.TRAIN_EXAMPLES.items()}
  # T5's name is not taken: its mixture holds WSC-simple and DPR tasks we do not register.
  assert f'super_glue_v102_proportional{suffix}' not in seqio.MixtureRegistry.names()
  with tfds.testing.mock_data(num_examples=4):
    dataset = mixture.get_dataset(test_glue.LENGTHS, split='train', shuffle=False)
    converted = seqio.EncDecFeatureConverter(pack=False)(dataset, test_glue.LENGTHS)
    test_glue.check_batch(next(converted.batch(2).as_numpy_iterator()))


def _labelled(config: str, example: dict) -> dict:
  prefix, fields, labels, _, _ = superglue.TASKS[config]
  [formatted] = test_glue.format_one(
      text_formats.labelled_fields(prefix, fields, labels), {**example, 'idx': 3})
  return formatted


def test_labelled_formats_as_t5():
  assert _labelled('boolq', {'passage': 'P.', 'question': 'is it', 'label': 1}) == {
      'inputs': 'boolq passage: P. question: is it', 'targets': 'True', 'idx': 3}
  assert _labelled('cb', {'premise': 'P.', 'hypothesis': 'H.', 'label': 2})['targets'] == (
      'neutral')
  copa = {'premise': 'It rained.', 'choice1': 'A.', 'choice2': 'B.', 'question': 'effect',
          'label': 1}
  assert _labelled('copa', copa) == {
      'inputs': 'copa choice1: A. choice2: B. premise: It rained. question: effect',
      'targets': 'choice2', 'idx': 3}
  wic = {'word': 'bank', 'sentence1': 'S1.', 'sentence2': 'S2.', 'start1': 0, 'end1': 1,
         'start2': 0, 'end2': 1, 'label': 0}
  assert _labelled('wic', wic)['inputs'] == 'wic sentence1: S1. sentence2: S2. word: bank'
  axb = {'sentence1': 'First.', 'sentence2': 'Second.', 'label': 1}
  assert _labelled('axb', axb) == {
      'inputs': 'rte hypothesis: Second. premise: First.', 'targets': 'not_entailment',
      'idx': 3}
  assert _labelled('axg', {'premise': 'P.', 'hypothesis': 'H.', 'label': 0})['inputs'] == (
      'rte hypothesis: H. premise: P.')


def test_multirc_strips_html_and_keeps_its_question_index():
  example = {'paragraph': '<b>Sent 1: </b>A.<br><b>Sent 2: </b>B.', 'question': 'Q?',
             'answer': 'Ans', 'label': 1, 'idx': {'paragraph': 4, 'question': 5, 'answer': 6}}
  preprocessor = text_formats.labelled_fields('multirc', superglue.MULTIRC_FIELDS,
                                              superglue.BINARY, strip_html=True)
  [formatted] = test_glue.format_one(preprocessor, example)
  assert formatted == {'inputs': 'multirc question: Q? answer: Ans paragraph: Sent 1: A. '
                                 'Sent 2: B.', 'targets': 'True', 'idx/paragraph': 4,
                       'idx/question': 5, 'idx/answer': 6}
  assert postprocessors.multirc(b'True', formatted, is_target=True) == {
      'value': 1, 'group': (4, 5)}
  assert postprocessors.multirc('nope') == {'value': -1}


def test_record_makes_one_example_per_answer():
  example = {'passage': 'Big news.\n@highlight\nA won\n@highlight\nB lost',
             'query': '@placeholder won', 'entities': ['A', 'B'], 'answers': ['A', 'a'],
             'idx': {'passage': 1, 'query': 2}}
  formatted = test_glue.format_one(text_formats.record('record'), example)
  inputs = 'record query: @placeholder won entities: A, B passage: Big news. A won. B lost'
  assert [(f['inputs'], f['targets']) for f in formatted] == [(inputs, 'A'), (inputs, 'a')]
  assert postprocessors.record(b'x', formatted[1], is_target=True) == {
      'answers': ['A', 'a'], 'group': (1, 2)}
  no_answers = {**example, 'answers': tf.constant([], tf.string)}
  unanswered = test_glue.format_one(text_formats.record(None), no_answers)
  assert [f['targets'] for f in unanswered] == ['<unk>']
  assert unanswered[0]['inputs'].startswith('query: @placeholder won entities: A, B passage:')


def test_wsc_marks_the_noun_phrase_and_the_pronoun():
  example = {'text': 'The city councilmen refused the demonstrators a permit because they '
                     'feared violence.', 'span1_index': 0, 'span1_text': 'The city councilmen',
             'span2_index': 9, 'span2_text': 'they', 'label': 1, 'idx': 0}
  [formatted] = test_glue.format_one(text_formats.wsc('wsc'), example)
  assert formatted['inputs'] == ('wsc text: * The city councilmen * refused the demonstrators '
                                 'a permit because # they # feared violence.')
  assert formatted['targets'] == 'True'
  before = {**example, 'text': 'They said the men left.', 'span1_index': 2,
            'span1_text': 'the men', 'span2_index': 0, 'span2_text': 'They', 'label': 0}
  [formatted] = test_glue.format_one(text_formats.wsc(None), before)
  assert formatted['inputs'] == 'text: # They # said * the men * left.'
  literal = {**example, 'text': 'A+B said he won.', 'span1_index': 0, 'span1_text': 'A+B',
             'span2_index': 2, 'span2_text': 'he'}
  [formatted] = test_glue.format_one(text_formats.wsc('wsc'), literal)
  assert formatted['inputs'] == 'wsc text: * A+B * said # he # won.'


def test_record_evaluates_through_seqio_grouping_the_copies_of_each_query():
  """Perfect predictions score 100 on every query, however many answers it has."""
  with tfds.testing.mock_data(num_examples=3):
    evaluator = seqio.Evaluator(
        'super_glue_record_v102', feature_converter=seqio.EncDecFeatureConverter(pack=False),
        eval_split='validation', sequence_length={'inputs': 32, 'targets': 64})
    copies = len(list(evaluator.cached_task_datasets['super_glue_record_v102']))
    perfect = lambda dataset: [(i, f['decoder_target_tokens'].tolist())
                               for i, f in dataset.as_numpy_iterator()]
    results, _ = evaluator.evaluate(compute_metrics=True, predict_fn=perfect,
                                    score_fn=lambda dataset: [])
  assert copies > 3  # Mock queries have several answers each.
  assert results.result()['super_glue_record_v102'] == {'em': 100.0, 'f1': 100.0}


def test_axg_reports_accuracy_and_gender_parity_over_consecutive_pairs():
  task = seqio.get_mixture_or_task('super_glue_axg_v102')
  e, n = 'entailment', 'not_entailment'
  # Pairs (idx 0, 1), (2, 3), (4, 5): gold e e | n n | e e; predicted e e | n e | n n.
  examples = [{'idx': idx} for idx in range(6)]
  targets = [task.postprocess_fn(label, example=example, is_target=True)
             for label, example in zip([e, e, n, n, e, e], examples)]
  predictions = [task.postprocess_fn(label, example=example)
                 for label, example in zip([e, e, n, e, n, n], examples)]
  assert targets[3] == {'value': 1, 'group': 1}
  results = {}
  for metric_fn in task.predict_metric_fns:
    results.update(metric_fn(targets, predictions))
  # Right: idx 0, 1, 2 -> 3/6. Pairs agreeing: (0, 1) and (4, 5), both wrong -> 2/3.
  assert results == pytest.approx({'accuracy': 50.0, 'gender_parity': 200 / 3})
