"""Tiny learnable seqio tasks for tests: is the review positive? (`tiny_sentiment`), and the
same reviews with every label swapped (`tiny_opposite`), a second task for one frozen model."""

import functools

import numpy as np
import seqio
import tensorflow as tf

from paths import VOCAB_PATH

GOOD = ['good', 'great', 'lovely', 'fine']
BAD = ['bad', 'awful', 'boring', 'poor']
FILLER = ['the', 'film', 'was', 'plot', 'actors', 'very', 'and', 'music']


def reviews(split: str, shuffle_files: bool = False, seed=None, opposite: bool = False):
  del shuffle_files, seed
  rng = np.random.RandomState({'train': 0, 'validation': 1}[split])
  inputs, targets = [], []
  for _ in range({'train': 512, 'validation': 32}[split]):
    positive = rng.rand() < 0.5
    words = list(rng.choice(FILLER, 4)) + [rng.choice(GOOD if positive else BAD)]
    rng.shuffle(words)
    inputs.append(' '.join(words))
    targets.append('positive' if positive != opposite else 'negative')
  return tf.data.Dataset.from_tensor_slices({'inputs': inputs, 'targets': targets})


def accuracy(targets, predictions):
  return {'accuracy': 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


if 'tiny_sentiment' not in seqio.TaskRegistry.names():
  vocabulary = seqio.SentencePieceVocabulary(VOCAB_PATH)
  for name, opposite in (('tiny_sentiment', False), ('tiny_opposite', True)):
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(functools.partial(reviews, opposite=opposite),
                                        splits=['train', 'validation']),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={feature: seqio.Feature(vocabulary, add_eos=True)
                         for feature in ('inputs', 'targets')},
        metric_fns=[accuracy])
