"""Our T5 equals Hugging Face's T5 on the same weights: logits, greedy and beam search."""

import functools

import jax
import numpy as np
import pytest

from conftest import make_batch
from prompt_tuning.formats import hf_convert
from prompt_tuning.model import decoding
from prompt_tuning.model import models
from prompt_tuning.model import network


def _relative_error(ours, theirs):
  return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


def _hf_forward(hf_model, batch, inputs_embeds=None, attention_mask=None):
  import torch  # pylint: disable=g-import-not-at-top
  encoder_tokens = np.asarray(batch['encoder_input_tokens'])
  with torch.no_grad():
    out = hf_model(
        input_ids=None if inputs_embeds is not None else torch.tensor(encoder_tokens),
        inputs_embeds=inputs_embeds,
        attention_mask=torch.tensor(encoder_tokens > 0).long() if attention_mask is None
        else attention_mask,
        decoder_input_ids=torch.tensor(np.asarray(batch['decoder_input_tokens'])).long())
  return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


@pytest.mark.parametrize('hf_config', [
    dict(),  # T5 1.1: gated GELU, untied output layer.
    dict(num_decoder_layers=3, d_kv=16, num_heads=3),  # H * D != E, uneven stacks.
    dict(feed_forward_proj='relu', tie_word_embeddings=True),  # T5 1.0: ReLU, tied + 1/sqrt(E).
    dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),  # Small.
], ids=['t5_1_1_tiny', 'uneven', 't5_1_0_tiny', 't5_1_1_small'])
def test_encoder_outputs_and_logits_match_hf(make_hf_t5, hf_config):
  hf_model, cfg, params = make_hf_t5(**hf_config)
  batch = make_batch([9, 5, 1], [6, 3, 6], vocab_size=cfg.vocab_size, encoder_len=140)
  module = network.Transformer(cfg)
  encoded, mask = module.apply({'params': params}, batch['encoder_input_tokens'], method='encode')
  logits = module.apply({'params': params}, batch['encoder_input_tokens'],
                        batch['decoder_input_tokens'], batch['decoder_target_tokens'])
  hf_encoded, hf_logits = _hf_forward(hf_model, batch)
  real_inputs = np.asarray(mask, bool)
  real_targets = np.asarray(batch['decoder_target_tokens']) > 0
  assert _relative_error(np.asarray(encoded)[real_inputs], hf_encoded[real_inputs]) <= 1e-4
  assert _relative_error(np.asarray(logits)[real_targets], hf_logits[real_targets]) <= 1e-4


def test_prompted_model_matches_hf_fed_prompt_embeddings(make_hf_t5):
  """A prompt is HF's `inputs_embeds = [prompt; embed(tokens)]` with the mask extended."""
  import torch  # pylint: disable=g-import-not-at-top
  hf_model, cfg, params = make_hf_t5()
  batch = make_batch([7, 3], [4, 2])
  module = network.Transformer(cfg, prompt_length=5)
  prompt = np.random.RandomState(1).uniform(-0.5, 0.5, (5, cfg.emb_dim)).astype(np.float32)
  params = {**params, 'encoder': {**params['encoder'], 'prompt': {'prompt': prompt}}}
  logits = module.apply({'params': params}, batch['encoder_input_tokens'],
                        batch['decoder_input_tokens'], batch['decoder_target_tokens'])
  tokens = torch.tensor(np.asarray(batch['encoder_input_tokens'])).long()
  embeds = torch.cat([torch.tensor(prompt)[None].expand(2, -1, -1),
                      hf_model.shared(tokens)], dim=1)
  mask = torch.cat([torch.ones(2, 5, dtype=torch.long), (tokens > 0).long()], dim=1)
  _, hf_logits = _hf_forward(hf_model, batch, inputs_embeds=embeds, attention_mask=mask)
  real_targets = np.asarray(batch['decoder_target_tokens']) > 0
  assert _relative_error(np.asarray(logits)[real_targets], hf_logits[real_targets]) <= 1e-4


def _hf_generate(hf_model, batch, max_new_tokens, **kwargs):
  """HF sequences without the start token, cut after EOS and zero-padded to max_new_tokens."""
  import torch  # pylint: disable=g-import-not-at-top
  tokens = np.asarray(batch['encoder_input_tokens'])
  with torch.no_grad():
    out = hf_model.generate(input_ids=torch.tensor(tokens).long(),
                            attention_mask=torch.tensor(tokens > 0).long(),
                            max_new_tokens=max_new_tokens, do_sample=False,
                            return_dict_in_generate=True, output_scores=True, **kwargs)
  sequences = out.sequences.numpy()[:, 1:]
  result = np.zeros((len(tokens), max_new_tokens), np.int64)
  for row, sequence in zip(result, sequences):
    end = list(sequence).index(1) + 1 if 1 in sequence else len(sequence)
    row[:end] = sequence[:end]
  return result, getattr(out, 'sequences_scores', None)


@pytest.fixture(scope='module')
def decoding_setup(make_hf_t5):
  """A model whose outputs vary in length (EOS made likelier) and whose beams differ."""
  hf_model, cfg, params = make_hf_t5(seed=1, num_layers=3, lm_head_scale=0.2, eos_boost=0.15)
  batch = make_batch([9, 5, 9, 2, 7, 9], [1] * 6, vocab_size=cfg.vocab_size, seed=3)
  return hf_model, cfg, params, batch


def test_greedy_decoding_matches_hf_generate(decoding_setup):
  hf_model, cfg, params, batch = decoding_setup
  model = models.EncoderDecoderModel(network.Transformer(cfg), decoding.greedy)
  tokens, _ = jax.jit(model.predict_batch, static_argnames='max_decode_length')(
      params, batch, max_decode_length=12)
  hf_tokens, _ = _hf_generate(hf_model, batch, 12)
  np.testing.assert_array_equal(np.asarray(tokens), hf_tokens)
  lengths = (hf_tokens > 0).sum(axis=1)
  assert len(set(lengths)) > 1, 'test data should produce sequences of several lengths'


@pytest.mark.parametrize('num_beams,length_penalty', [(2, 1.0), (4, 0.6), (3, 2.0)])
def test_beam_search_matches_hf_generate(decoding_setup, num_beams, length_penalty):
  hf_model, cfg, params, batch = decoding_setup
  decode_fn = functools.partial(decoding.beam_search, num_beams=num_beams,
                                length_penalty=length_penalty)
  model = models.EncoderDecoderModel(network.Transformer(cfg), decode_fn)
  tokens, scores = jax.jit(model.predict_batch, static_argnames='max_decode_length')(
      params, batch, max_decode_length=12)
  hf_tokens, hf_scores = _hf_generate(hf_model, batch, 12, num_beams=num_beams,
                                      length_penalty=length_penalty)
  np.testing.assert_array_equal(np.asarray(tokens), hf_tokens)
  np.testing.assert_allclose(np.asarray(scores), hf_scores.numpy(), rtol=1e-4, atol=1e-5)
  greedy, _ = _hf_generate(hf_model, batch, 12)
  assert (greedy != hf_tokens).any(), 'beam search should differ from greedy on this data'


def test_hf_state_dict_round_trip_is_exact(make_hf_t5):
  for config in (dict(), dict(feed_forward_proj='relu', tie_word_embeddings=True)):
    hf_model, cfg, params = make_hf_t5(**config)
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    back = hf_convert.to_hf(params, cfg)
    assert set(back) == set(state)
    for key, value in state.items():
      np.testing.assert_array_equal(back[key], value, err_msg=key)
    again = hf_convert.from_hf(back, cfg)
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_hf_weights_load_into_the_scanned_layout(make_hf_t5):
  hf_model, cfg, params = make_hf_t5()
  scanned_cfg = network.T5Config(**{**cfg.__dict__, 'scan_layers': True})
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  scanned = hf_convert.from_hf(state, scanned_cfg)
  assert scanned['encoder']['layers']['mlp']['wo']['kernel'].shape[0] == cfg.num_encoder_layers
  jax.tree.map(np.testing.assert_array_equal, network.unstack_layers(scanned, cfg), params)
  back = hf_convert.to_hf(scanned, scanned_cfg)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_hf_state_dict_missing_weights_is_a_clear_error(make_hf_t5):
  hf_model, cfg, _ = make_hf_t5()
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()
           if 'block.1.' not in k}
  with pytest.raises(ValueError, match='lacks .* weights'):
    hf_convert.from_hf(state, cfg)
