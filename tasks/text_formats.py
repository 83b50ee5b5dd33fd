"""T5's text-to-text formats of GLUE, SuperGLUE and SQuAD (MRQA) examples, as seqio
preprocessors.

Each maker takes the task prefix (e.g. 'rte'; None for the taskless variant) and returns a
preprocessor `tf.data.Dataset -> tf.data.Dataset` that writes `inputs` and `targets` strings
and keeps the example index (`idx`, or `idx/<part>` when TFDS gives a dict). A label of -1
(the unlabelled test splits) becomes the target '<unk>', as in T5.
"""

from typing import Optional, Sequence

import seqio
import tensorflow as tf

Fields = Sequence[tuple[str, str]]  # (name written in the inputs, TFDS feature).


def _join(prefix: Optional[str], parts: Sequence) -> tf.Tensor:
  return tf.strings.join(([prefix] if prefix else []) + list(parts), separator=' ')


def _label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  return tf.cond(tf.equal(label, -1), lambda: tf.constant('<unk>'),
                 lambda: tf.gather(tf.constant(list(label_names)), label))


def _index(example) -> dict:
  idx = example['idx']
  if isinstance(idx, dict):
    return {f'idx/{part}': value for part, value in idx.items()}
  return {'idx': idx}


def labelled_fields(prefix: Optional[str], fields: Fields, label_names: Sequence[str],
                    strip_html: bool = False):
  """'<prefix> name1: text1 name2: text2 ...' -> the label's name.

  `strip_html` turns '<br>' into a space and drops '<b>' / '</b>' (MultiRC's paragraphs).
  """

  @seqio.map_over_dataset
  def fn(example):
    parts = []
    for name, feature in fields:
      parts += [f'{name}:', example[feature]]
    inputs = _join(prefix, parts)
    if strip_html:
      inputs = tf.strings.regex_replace(inputs, '<br>', ' ')
      inputs = tf.strings.regex_replace(inputs, '<(/)?b>', '')
    return {'inputs': inputs, 'targets': _label_text(example['label'], label_names),
            **_index(example)}

  return fn


def stsb(prefix: Optional[str]):
  """'stsb sentence1: ... sentence2: ...' -> the similarity rounded to 0.2, e.g. '3.4'."""

  @seqio.map_over_dataset
  def fn(example):
    inputs = _join(prefix, ['sentence1:', example['sentence1'],
                            'sentence2:', example['sentence2']])
    score = tf.round(example['label'] * 5.0) / 5.0
    return {'inputs': inputs, 'targets': tf.strings.as_string(score, precision=1),
            'idx': example['idx']}

  return fn


def _mark_span(text: tf.Tensor, span: tf.Tensor, word_index: tf.Tensor, mark: str):
  """Surrounds `span`, which starts at word `word_index` of `text`, with `mark`s."""
  pattern = tf.strings.join(['^((?:\\S+\\s){', tf.strings.as_string(word_index), '})(\\Q',
                             span, '\\E)'])  # \Q...\E: the span's text, taken literally.
  return tf.strings.regex_replace(text, pattern, f'\\1{mark} \\2 {mark}')


def wsc(prefix: Optional[str]):
  """'wsc text: The * city councilmen * refused ... because # they # feared ...' -> 'True' /
  'False': does the pronoun (between #) refer to the noun phrase (between *)?"""

  @seqio.map_over_dataset
  def fn(example):
    text = _mark_span(example['text'], example['span1_text'], example['span1_index'], '*')
    # The first marks add two words before the pronoun when the noun phrase comes first.
    shift = 2 * tf.cast(example['span1_index'] < example['span2_index'], tf.int32)
    text = _mark_span(text, example['span2_text'], example['span2_index'] + shift, '#')
    return {'inputs': _join(prefix, ['text:', text]),
            'targets': _label_text(example['label'], ['False', 'True']), 'idx': example['idx']}

  return fn


def record(prefix: Optional[str]):
  """'record query: ... entities: A, B, ... passage: ...' -> one example per answer.

  Each copy keeps all `answers` (for the metric) and `idx/passage`, `idx/query` (to group
  the copies back). The passage's '@highlight' lines become sentences.
  """

  def one_per_answer(example):
    answers = example['answers']
    count = tf.maximum(tf.size(answers), 1)
    targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant(['<unk>']))
    passage = tf.strings.regex_replace(example['passage'], '(\\.|\\?|\\!|\\"|\\\')\\n@highlight\\n',
                                       '\\1 ')
    passage = tf.strings.regex_replace(passage, '\\n@highlight\\n', '. ')
    inputs = _join(prefix, ['query:', example['query'], 'entities:',
                            tf.strings.reduce_join(example['entities'], separator=', '),
                            'passage:', passage])
    repeat = lambda value: tf.repeat(value[tf.newaxis], count, axis=0)
    return tf.data.Dataset.from_tensor_slices({
        'inputs': repeat(inputs), 'targets': targets, 'answers': repeat(answers),
        **{key: repeat(value) for key, value in _index(example).items()}})

  return lambda dataset: dataset.flat_map(one_per_answer)


@seqio.map_over_dataset
def squad(example):
  """'question: <question> context: <context>' -> the first answer, as T5 formats SQuAD;
  keeps all `answers` for the metric (postprocessors.answers)."""
  return {'inputs': _join(None, ['question:', example['question'], 'context:',
                                 example['context']]),
          'targets': example['answers'][0], 'answers': example['answers']}
