"""The demo's tasks, all on the generated review corpus (`tasks/synthetic_reviews.py`):

- `demo_sentiment`: review -> `positive` / `negative` (SST-2 style), accuracy.
- `demo_negation`: the same, but a quarter of the opinions are negated ("the plot was not
  dull" in a positive review), a word the demo model never saw in pretraining; accuracy.
  Harder: single prompts of the demo model land below 100% and differ by seed, so
  ensembles and comparisons show something.
- `demo_span_corruption`, `demo_prefix_lm`: the two pretraining stages of the shipped
  demo model (T5's span corruption, then LM adaptation).

The vocabulary is the demo model's own SentencePiece model, shipped in the package.
"""

import seqio
import tensorflow as tf

from prompt_tuning import demo_model
from prompt_tuning.inference import labels
from tasks import metrics
from tasks import preprocessors
from tasks import synthetic_reviews

SPLITS = {'train': (0, 4000), 'validation': (1, 200)}  # (seed, examples).
PRETRAINING_DOCUMENTS = 50_000


def _pairs_source(make_pairs):
  """A seqio source function of the (text, label) pairs `make_pairs(seed, count)` gives for
  each split of `SPLITS`."""
  def source(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed
    pairs = make_pairs(*SPLITS[split])
    return tf.data.Dataset.from_tensor_slices({'inputs': [text for text, _ in pairs],
                                               'targets': [label for _, label in pairs]})
  return source


def _document_source(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices(
      {'targets': synthetic_reviews.documents(seed=2, count=PRETRAINING_DOCUMENTS)})


def _register():
  vocabulary = seqio.SentencePieceVocabulary(demo_model.VOCABULARY_PATH, extra_ids=100)
  features = {name: seqio.Feature(vocabulary, add_eos=True) for name in ('inputs', 'targets')}
  for name, make_pairs in (('demo_sentiment', synthetic_reviews.labelled_reviews),
                           ('demo_negation', synthetic_reviews.negated_reviews)):
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_pairs_source(make_pairs), splits=list(SPLITS)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=features, metric_fns=[metrics.accuracy])
    labels.register_labels(name, synthetic_reviews.LABELS)
  for name, objective in (('demo_span_corruption', preprocessors.span_corruption),
                          ('demo_prefix_lm', preprocessors.prefix_lm)):
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_document_source, splits=['train']),
        preprocessors=[seqio.preprocessors.tokenize, objective,
                       seqio.preprocessors.append_eos_after_trim],
        output_features=features, metric_fns=[])


if 'demo_sentiment' not in seqio.TaskRegistry.names():
  _register()
