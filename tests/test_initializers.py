"""Prompt initializers: shapes, values, and clear errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paths import VOCAB_PATH
from prompt_tuning.model import initializers

RNG = jax.random.PRNGKey(0)
EMBEDDINGS = jnp.asarray(np.random.RandomState(0).normal(size=(32128, 16)), jnp.float32)


@pytest.fixture(scope='module')
def vocabulary():
  return initializers.sentencepiece_vocabulary(VOCAB_PATH)


def test_uniform_has_shape_and_range():
  prompt = initializers.uniform(0.5)(RNG, (100, 16), EMBEDDINGS)
  assert prompt.shape == (100, 16) and prompt.dtype == jnp.float32
  assert float(prompt.min()) >= -0.5 and float(prompt.max()) <= 0.5
  assert float(prompt.max() - prompt.min()) > 0.9  # Spans the range, not a constant.


def _row_ids(prompt, embeddings):
  """Index of the embedding row equal to each prompt row."""
  distances = jnp.abs(prompt[:, None, :] - embeddings[None, :, :]).sum(-1)
  assert np.allclose(distances.min(axis=1), 0.0), 'every row should be an embedding row'
  return np.asarray(distances.argmin(axis=1))


def test_sampled_vocab_draws_distinct_rows_from_the_top_n():
  embeddings = EMBEDDINGS[:300]
  prompt = initializers.sampled_vocab(population_size=100)(RNG, (100, 16), embeddings)
  ids = _row_ids(prompt, embeddings)
  assert sorted(ids) == list(range(100))  # All of the first 100, each once.
  other = initializers.sampled_vocab(population_size=100)(jax.random.PRNGKey(1), (100, 16),
                                                          embeddings)
  assert (_row_ids(other, embeddings) != ids).any()  # The rng decides the order.


def test_sampled_vocab_refuses_more_rows_than_population():
  with pytest.raises(ValueError, match='exceeds the 10 rows'):
    initializers.sampled_vocab(population_size=10)(RNG, (11, 16), EMBEDDINGS)


def test_class_labels_average_subtoken_embeddings(vocabulary):
  labels = ['positive', 'not_entailment']
  prompt = initializers.class_labels(labels, vocabulary, initializers.uniform())(
      RNG, (5, 16), EMBEDDINGS)
  assert prompt.shape == (5, 16)
  multi = vocabulary.encode('not_entailment')
  assert len(multi) > 1, 'the test needs a label made of several sub-tokens'
  np.testing.assert_allclose(prompt[0], EMBEDDINGS[np.array(vocabulary.encode('positive'))].mean(0))
  np.testing.assert_allclose(prompt[1], EMBEDDINGS[np.array(multi)].mean(0), rtol=1e-6)
  rest = np.asarray(prompt[2:])
  assert np.abs(rest).max() <= 0.5 and np.abs(rest).min() > 0  # From the uniform fallback.


def test_class_labels_errors(vocabulary):
  with pytest.raises(ValueError, match="class label '' tokenises to no tokens"):
    initializers.class_labels(['yes', ''], vocabulary)
  init = initializers.class_labels(['a', 'b', 'c'], vocabulary)
  with pytest.raises(ValueError, match='raise PROMPT_LENGTH to at least 3'):
    init(RNG, (2, 16), EMBEDDINGS)


def test_text_repeats_and_truncates(vocabulary):
  ids = vocabulary.encode('Classify the sentiment:')
  long = initializers.text('Classify the sentiment:', vocabulary)(RNG, (len(ids) * 2 + 1, 16),
                                                                   EMBEDDINGS)
  expected = np.concatenate([ids, ids, ids[:1]])
  np.testing.assert_array_equal(long, EMBEDDINGS[expected])
  short = initializers.text('Classify the sentiment:', vocabulary)(RNG, (2, 16), EMBEDDINGS)
  np.testing.assert_array_equal(short, EMBEDDINGS[np.array(ids[:2])])


def test_from_npy_loads_and_checks_shape(tmp_path):
  path = tmp_path / 'prompt.npy'
  value = np.random.RandomState(0).normal(size=(4, 16)).astype(np.float32)
  np.save(path, value)
  np.testing.assert_array_equal(initializers.from_npy(str(path))(RNG, (4, 16), None), value)
  with pytest.raises(ValueError, match=r'has shape \(4, 16\) but the model expects \(5, 16\)'):
    initializers.from_npy(str(path))(RNG, (5, 16), None)
