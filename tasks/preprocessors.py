"""Pretraining objectives as seqio preprocessors: T5 span corruption and prefix LM.

Both read tokenized `targets` (a whole document) and write `inputs` and `targets`; the
randomness comes from seqio's per-example seeds, so a seeded dataset is reproducible.
"""

import numpy as np
import seqio
import tensorflow as tf


def _random_partition(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
  """`parts` positive integers summing to `total`, uniformly among such partitions."""
  cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [total]]))


def corrupt_spans(tokens: np.ndarray, seed: np.ndarray, vocab_size: int,
                  noise_density: float = 0.15, mean_span_length: float = 3.0):
  """T5's span corruption of one token sequence [L] -> (inputs, targets).

  About `noise_density` of the tokens, in spans of mean length `mean_span_length`, are
  removed from the inputs, each span replaced by a sentinel (`<extra_id_0>` =
  vocab_size - 1, then counting down); the targets list each sentinel followed by the
  tokens it replaced, and end with one more sentinel.
  """
  length = len(tokens)
  if length < 2:
    return tokens, np.array([vocab_size - 1], tokens.dtype)
  rng = np.random.default_rng(seed.astype(np.uint32))
  num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
  num_spans = int(np.clip(round(num_noise / mean_span_length), 1,
                          min(num_noise, length - num_noise)))
  noise_lengths = _random_partition(rng, num_noise, num_spans) if num_spans > 1 else [num_noise]
  keep_lengths = (_random_partition(rng, length - num_noise, num_spans) if num_spans > 1
                  else [length - num_noise])
  inputs, targets, position = [], [], 0
  for i, (keep, noise) in enumerate(zip(keep_lengths, noise_lengths)):
    sentinel = vocab_size - 1 - i
    inputs.extend(tokens[position:position + keep])
    position += keep
    inputs.append(sentinel)
    targets.append(sentinel)
    targets.extend(tokens[position:position + noise])
    position += noise
  targets.append(vocab_size - 1 - num_spans)
  return np.asarray(inputs, tokens.dtype), np.asarray(targets, tokens.dtype)


def span_corruption(dataset: tf.data.Dataset, output_features, noise_density: float = 0.15,
                    mean_span_length: float = 3.0) -> tf.data.Dataset:
  """seqio preprocessor: `targets` (a tokenized document) -> span-corrupted inputs/targets."""
  vocab_size = output_features['targets'].vocabulary.vocab_size

  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(example, seed):
    inputs, targets = tf.numpy_function(
        lambda tokens, s: corrupt_spans(tokens, s, vocab_size, noise_density, mean_span_length),
        [example['targets'], seed], [tf.int32, tf.int32])
    inputs.set_shape([None])
    targets.set_shape([None])
    return {'inputs': inputs, 'targets': targets}

  return corrupt(dataset)


def prefix_lm(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """seqio preprocessor: split each document at a random point into inputs | targets
  (the LM adaptation of the T5 1.1 LM-adapted checkpoints)."""

  @seqio.map_over_dataset(num_seeds=1)
  def split(example, seed):
    tokens = example['targets']
    length = tf.shape(tokens)[0]
    cut = tf.random.stateless_uniform([], seed, 1, tf.maximum(length, 2), tf.int32)
    return {'inputs': tokens[:cut], 'targets': tokens[cut:]}

  return split(dataset)
