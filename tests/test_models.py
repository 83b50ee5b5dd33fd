"""EncoderDecoderModel: loss, scores and decoding options on a tiny model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_batch
from prompt_tuning.model import decoding
from prompt_tuning.model import models
from prompt_tuning.model import network

CONFIG = network.T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                          num_decoder_layers=2, head_dim=8, mlp_dim=64, dtype='float32')


@pytest.fixture(scope='module')
def setup():
  model = models.EncoderDecoderModel(network.Transformer(CONFIG, prompt_length=2), z_loss=0.0)
  batch = make_batch([5, 3, 7], [4, 2, 3])
  params = model.init(jax.random.PRNGKey(0), batch)
  return model, params, batch


def _log_probs(model, params, batch):
  """Target-token log-probabilities [B, T], computed independently of the model API."""
  logits = np.asarray(model.logits(params, batch), np.float64)
  logits -= logits.max(-1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return np.take_along_axis(log_probs, np.asarray(batch['decoder_target_tokens'])[..., None],
                            -1)[..., 0]


def test_loss_is_mean_cross_entropy_over_weighted_tokens(setup):
  model, params, batch = setup
  weights = np.asarray(batch['decoder_loss_weights'])
  loss, metrics = model.loss_fn(params, batch)
  expected = -(_log_probs(model, params, batch) * weights).sum() / weights.sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert metrics['num_tokens'] == weights.sum() == 9
  assert 0.0 <= metrics['accuracy'] <= 1.0


def test_z_loss_and_label_smoothing_match_their_formulas():
  logits = jnp.array([[[2.0, 0.0, -1.0, 0.5]]])
  targets = jnp.array([[0]])
  log_z = np.log(np.exp(np.array([2.0, 0.0, -1.0, 0.5])).sum())
  plain, _ = models.cross_entropy(logits, targets)
  np.testing.assert_allclose(plain[0, 0], log_z - 2.0, rtol=1e-6)
  with_z, z_term = models.cross_entropy(logits, targets, z_loss=1e-2)
  np.testing.assert_allclose(z_term[0, 0], 1e-2 * log_z ** 2, rtol=1e-6)
  np.testing.assert_allclose(with_z[0, 0], plain[0, 0] + 1e-2 * log_z ** 2, rtol=1e-6)
  smoothed, _ = models.cross_entropy(logits, targets, label_smoothing=0.3)
  log_p = np.array([2.0, 0.0, -1.0, 0.5]) - log_z
  soft = np.array([0.7, 0.1, 0.1, 0.1])
  np.testing.assert_allclose(smoothed[0, 0], -(soft * log_p).sum() + (soft * np.log(soft)).sum(),
                             rtol=1e-5)
  perfect, _ = models.cross_entropy(jnp.log(jnp.asarray(soft))[None, None], targets,
                                    label_smoothing=0.3)
  np.testing.assert_allclose(perfect[0, 0], 0.0, atol=1e-6)  # Matching the targets costs 0.


def test_score_batch_sums_target_log_probs(setup):
  model, params, batch = setup
  expected = (_log_probs(model, params, batch) * np.asarray(batch['decoder_loss_weights'])).sum(-1)
  np.testing.assert_allclose(model.score_batch(params, batch), expected, rtol=1e-5)


def _predict(model, params, batch, rng=None):
  return jax.jit(model.predict_batch, static_argnames='max_decode_length')(
      params, batch, rng, max_decode_length=6)


def test_greedy_tokens_are_the_argmax_of_teacher_forced_logits(setup):
  model, params, batch = setup
  tokens, scores = _predict(model, params, batch)
  forced = {'encoder_input_tokens': batch['encoder_input_tokens'],
            'decoder_target_tokens': tokens,
            'decoder_input_tokens': jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))}
  real = np.asarray(tokens) > 0
  np.testing.assert_array_equal(np.argmax(model.logits(params, forced), -1)[real],
                                np.asarray(tokens)[real])
  np.testing.assert_allclose(scores, model.score_batch(params, forced), rtol=1e-5)


def _sampling_model(**options):
  return models.EncoderDecoderModel(network.Transformer(CONFIG, prompt_length=2),
                                    functools.partial(decoding.sample, **options))


def test_sampling_reduces_to_greedy_and_varies_with_the_rng(setup):
  model, params, batch = setup
  greedy, _ = _predict(model, params, batch)
  for options in (dict(top_k=1), dict(temperature=1e-4), dict(top_p=1e-6)):
    tokens, _ = _predict(_sampling_model(**options), params, batch, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(tokens, greedy, err_msg=str(options))
  free = _sampling_model(temperature=2.0)
  draws = [_predict(free, params, batch, jax.random.PRNGKey(seed))[0] for seed in range(2)]
  assert not np.array_equal(draws[0], draws[1])


def test_top_k_and_top_p_keep_only_the_likely_tokens():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda **kw: np.asarray(decoding._filter_logits(logits, **kw)[0] > -1e8)  # pylint: disable=protected-access
  np.testing.assert_array_equal(kept(top_k=2, top_p=1.0), [1, 1, 0, 0])
  np.testing.assert_array_equal(kept(top_k=0, top_p=0.7), [1, 1, 0, 0])
  np.testing.assert_array_equal(kept(top_k=0, top_p=0.81), [1, 1, 1, 0])
  np.testing.assert_array_equal(kept(top_k=0, top_p=0.01), [1, 0, 0, 0])


def test_decode_length_must_be_positive(setup):
  model, params, batch = setup
  with pytest.raises(ValueError, match='max_decode_length must be positive, got 0'):
    model.predict_batch(params, {**batch, 'decoder_target_tokens': batch['decoder_target_tokens'][:, :0]})
  with pytest.raises(ValueError, match='needs an rng'):
    _predict(_sampling_model(temperature=1.0), params, batch)
