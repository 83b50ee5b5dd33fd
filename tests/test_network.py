"""The network and its prompt: masks, prompt length 0, bf16, the KV cache, dropout."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_batch
from prompt_tuning.model import models
from prompt_tuning.model import network

CONFIG = network.T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                          num_decoder_layers=2, head_dim=8, mlp_dim=64, dtype='float32',
                          dropout_rate=0.1)
PROMPT_LENGTH = 3


@pytest.fixture(scope='module')
def prompted():
  module = network.Transformer(CONFIG, prompt_length=PROMPT_LENGTH)
  batch = make_batch([5, 2], [4, 3])
  params = module.init(jax.random.PRNGKey(0), batch['encoder_input_tokens'],
                       batch['decoder_input_tokens'])['params']
  return module, nn.meta.unbox(params)


def _logits(module, params, batch, **kwargs):
  return np.asarray(module.apply({'params': params}, batch['encoder_input_tokens'],
                                 batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                                 **kwargs))


def test_prompt_parameter_path_shape_and_axes():
  module = network.Transformer(CONFIG, prompt_length=PROMPT_LENGTH)
  batch = make_batch([5], [4])
  boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                             batch['encoder_input_tokens'],
                                             batch['decoder_input_tokens']))
  prompt = boxed['params']['encoder']['prompt']['prompt']
  assert prompt.value.shape == (PROMPT_LENGTH, CONFIG.emb_dim)
  assert prompt.names == ('prompt', 'embed')
  kernel = boxed['params']['encoder']['layers_0']['attention']['query']['kernel']
  assert kernel.names == ('embed', 'joined_kv')


def test_prompt_length_zero_is_exactly_the_plain_model(prompted):
  module, params = prompted
  plain = network.Transformer(CONFIG, prompt_length=0)
  batch = make_batch([5, 2], [4, 3])
  plain_params = nn.meta.unbox(plain.init(jax.random.PRNGKey(0), batch['encoder_input_tokens'],
                                          batch['decoder_input_tokens'])['params'])
  without_prompt = {**params, 'encoder': {k: v for k, v in params['encoder'].items()
                                          if k != 'prompt'}}
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  assert shapes(plain_params) == shapes(without_prompt)  # No prompt parameter at all.
  plain_logits = _logits(plain, without_prompt, batch)
  assert not np.allclose(plain_logits, _logits(module, params, batch))  # The prompt matters.
  assert np.array_equal(plain_logits, _logits(network.Transformer(CONFIG), without_prompt, batch))


def test_padding_is_never_attended(prompted):
  module, params = prompted
  short = make_batch([5, 2], [4, 3])
  long = make_batch([5, 2], [4, 3], encoder_len=20, target_len=9)
  real = np.asarray(short['decoder_target_tokens']) > 0
  np.testing.assert_allclose(_logits(module, params, long)[:, :4][real],
                             _logits(module, params, short)[real], rtol=1e-5, atol=1e-6)


def test_prompt_is_always_attended(prompted):
  module, params = prompted
  batch = make_batch([5, 0], [4, 3])  # The second example is all padding.
  _, mask = module.apply({'params': params}, batch['encoder_input_tokens'], method='encode')
  np.testing.assert_array_equal(mask[:, :PROMPT_LENGTH], 1)
  np.testing.assert_array_equal(mask[:, PROMPT_LENGTH:], batch['encoder_input_tokens'] > 0)
  shifted = jax.tree.map(lambda x: x, params)
  shifted['encoder']['prompt']['prompt'] = params['encoder']['prompt']['prompt'] + 1.0
  # With nothing else to read, the decoder's output still follows the prompt.
  assert not np.allclose(_logits(module, params, batch)[1], _logits(module, shifted, batch)[1])


def test_bf16_activations_stay_within_bf16_tolerance(prompted):
  module, params = prompted
  batch = make_batch([5, 2], [4, 3])
  bf16 = network.Transformer(network.T5Config(**{**CONFIG.__dict__, 'dtype': 'bfloat16'}),
                             prompt_length=PROMPT_LENGTH)
  encoded, _ = bf16.apply({'params': params}, batch['encoder_input_tokens'], method='encode')
  assert encoded.dtype == jnp.bfloat16
  reference, low = _logits(module, params, batch), _logits(bf16, params, batch)
  relative = np.abs(low - reference).max() / np.abs(reference).max()
  assert 0 < relative < 3e-2  # bf16 keeps 8 bits of mantissa (~4e-3 per operation).


def test_kv_cache_steps_equal_the_full_forward_pass(prompted):
  module, params = prompted
  batch = make_batch([5, 2], [6, 6])
  encoded, encoder_mask = module.apply({'params': params}, batch['encoder_input_tokens'],
                                       method='encode')
  decode = functools.partial(module.apply, method='decode', decode=True, max_decode_length=6,
                             mutable=['cache'])
  inputs = batch['decoder_input_tokens']
  _, variables = decode({'params': params}, encoded, encoder_mask, inputs[:, :1])
  step_logits = []
  for t in range(6):
    logits, variables = decode({'params': params, **variables}, None, None, inputs[:, t:t + 1])
    step_logits.append(logits[:, 0])
  np.testing.assert_allclose(np.stack(step_logits, axis=1), _logits(module, params, batch),
                             rtol=1e-5, atol=1e-5)


def test_dropout_only_when_enabled(prompted):
  module, params = prompted
  batch = make_batch([5, 2], [4, 3])
  rngs = lambda seed: {'dropout': jax.random.PRNGKey(seed)}
  off = _logits(module, params, batch)
  on = _logits(module, params, batch, enable_dropout=True, rngs=rngs(1))
  assert not np.allclose(on, off)
  np.testing.assert_array_equal(on, _logits(module, params, batch, enable_dropout=True,
                                            rngs=rngs(1)))


def test_config_rejects_bad_dimensions():
  with pytest.raises(ValueError, match='emb_dim must be positive'):
    network.T5Config(emb_dim=0)
  with pytest.raises(ValueError, match='mlp_activations'):
    network.T5Config(mlp_activations=('swish',))


def _variant(**changes):
  return network.Transformer(network.T5Config(**{**CONFIG.__dict__, **changes}),
                             prompt_length=PROMPT_LENGTH)


def test_scanned_layers_compute_the_same_as_unrolled_ones(prompted):
  module, params = prompted
  batch = make_batch([5, 2], [4, 3])
  scanned = _variant(scan_layers=True)
  stacked = network.stack_layers(params, CONFIG)
  shapes = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), batch['encoder_input_tokens'],
                          batch['decoder_input_tokens'])['params']
  assert jax.tree.map(jnp.shape, nn.meta.unbox(shapes)) == jax.tree.map(jnp.shape, stacked)
  kernel = shapes['encoder']['layers']['attention']['query']['kernel']
  assert kernel.names == ('layers', 'embed', 'joined_kv')
  np.testing.assert_allclose(_logits(scanned, stacked, batch), _logits(module, params, batch),
                             rtol=1e-5, atol=1e-5)
  model = models.EncoderDecoderModel(module)
  scanned_model = models.EncoderDecoderModel(scanned)
  np.testing.assert_array_equal(scanned_model.predict_batch(stacked, batch)[0],
                                model.predict_batch(params, batch)[0])


def test_remat_changes_memory_not_results(prompted):
  module, params = prompted
  batch = make_batch([5, 2], [4, 3])
  grads = {}
  for policy in ('none', 'full', 'minimal'):
    model = models.EncoderDecoderModel(_variant(remat_policy=policy))
    grads[policy] = jax.jit(jax.grad(lambda p, m=model: m.loss_fn(p, batch)[0]))(params)
  for policy in ('full', 'minimal'):
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                 grads[policy], grads['none'])
  with pytest.raises(ValueError, match="remat_policy='some'"):
    network.T5Config(remat_policy='some')
