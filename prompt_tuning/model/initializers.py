"""Prompt initializers: `init(rng, shape, embeddings) -> [P, E] array`.

`shape` is the prompt's `(P, E)`; `embeddings` is the frozen model's token embedding
table `[V, E]`, which the vocabulary-based initializers read. Each factory below is
gin-configurable and returns such a function, e.g. in a gin file:

    PROMPT_INITIALIZER = @initializers.sampled_vocab()
    initializers.sampled_vocab.population_size = 5000
"""

from typing import Callable, Protocol, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece

from prompt_tuning.formats import prompt_formats

Array = jax.Array
PromptInitializer = Callable[[Array, tuple[int, int], Array], Array]


class Vocabulary(Protocol):
  """Anything that turns text into token ids without EOS (seqio vocabularies do)."""

  def encode(self, text: str) -> Sequence[int]:
    ...


@gin.configurable
def sentencepiece_vocabulary(path: str) -> Vocabulary:
  """A SentencePiece model file, e.g. the T5 vocabulary `sentencepiece.model`."""
  return sentencepiece.SentencePieceProcessor(model_file=path)


@gin.configurable
def uniform(scale: float = 0.5) -> PromptInitializer:
  """Every value drawn from U(-scale, scale) (the paper's random init)."""

  def init(rng, shape, embeddings=None):
    del embeddings
    return jax.random.uniform(rng, shape, jnp.float32, -scale, scale)

  return init


@gin.configurable
def sampled_vocab(population_size: int = 5000) -> PromptInitializer:
  """Rows of the embedding table drawn without replacement from its first N rows.

  SentencePiece orders pieces by frequency, so the first 5000 are the common tokens.
  """

  def init(rng, shape, embeddings):
    length = shape[0]
    population = min(population_size, embeddings.shape[0])
    if length > population:
      raise ValueError(f'sampled_vocab: prompt length {length} exceeds the {population} rows '
                       'it samples from without replacement; raise population_size.')
    rows = jax.random.choice(rng, population, (length,), replace=False)
    return jnp.take(embeddings, rows, axis=0).astype(jnp.float32)

  return init


def _token_ids(text: str, vocabulary: Vocabulary, what: str) -> list[int]:
  ids = [int(i) for i in vocabulary.encode(text)]
  if not ids:
    raise ValueError(f'{what} {text!r} tokenises to no tokens; give it visible text.')
  return ids


@gin.configurable
def class_labels(labels: Sequence[str], vocabulary: Vocabulary,
                 fallback: PromptInitializer = uniform()) -> PromptInitializer:
  """Row i is the mean embedding of label i's sub-tokens; rows past the labels use `fallback`."""
  label_ids = [_token_ids(label, vocabulary, 'class label') for label in labels]

  def init(rng, shape, embeddings):
    length, width = shape
    if len(label_ids) > length:
      raise ValueError(f'class_labels: {len(label_ids)} labels do not fit a prompt of length '
                       f'{length}; raise PROMPT_LENGTH to at least {len(label_ids)}.')
    rows = [jnp.take(embeddings, jnp.asarray(ids), axis=0).astype(jnp.float32).mean(axis=0)
            for ids in label_ids]
    rest = fallback(rng, (length - len(label_ids), width), embeddings).astype(jnp.float32)
    return jnp.concatenate([jnp.stack(rows).reshape(-1, width), rest], axis=0)

  return init


@gin.configurable
def text(prompt_text: str, vocabulary: Vocabulary) -> PromptInitializer:
  """The embeddings of a discrete prompt's tokens, truncated or repeated to length P."""
  ids = _token_ids(prompt_text, vocabulary, 'prompt text')

  def init(rng, shape, embeddings):
    del rng
    repeated = np.resize(np.asarray(ids), shape[0])  # Cycles through ids, then truncates.
    return jnp.take(embeddings, jnp.asarray(repeated), axis=0).astype(jnp.float32)

  return init


@gin.configurable
def from_npy(path: str) -> PromptInitializer:
  """A saved prompt (`[P, E]` `.npy`, as exported by this library or the reference one)."""

  def init(rng, shape, embeddings=None):
    del rng, embeddings
    value = prompt_formats.load_npy(path)
    if value.shape != tuple(shape):
      raise ValueError(f'prompt file {path} has shape {value.shape} but the model expects '
                       f'{tuple(shape)} (PROMPT_LENGTH, emb_dim); export a matching prompt '
                       'or change PROMPT_LENGTH.')
    return jnp.asarray(value, jnp.float32)

  return init
