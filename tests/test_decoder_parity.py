"""Our decoder-only models equal Hugging Face's Llama, Gemma, Qwen2 and GPT-2 on the same
weights: logits with and without a prompt, greedy decoding, weight conversion both ways and
saved directories; a mixed prompt-table batch equals each prompt alone; only targets carry loss.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import _import_torch_side
from prompt_tuning.formats import hf_checkpoint
from prompt_tuning.formats import hf_decoder
from prompt_tuning.formats import initial_checkpoint
from prompt_tuning.model import decoder_models
from prompt_tuning.model import decoder_network
from prompt_tuning.model import prompts

FAMILIES = ('llama', 'gemma', 'qwen2', 'gpt2')
VOCAB, EOS = 96, 1
_TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
             pad_token_id=0, bos_token_id=2, eos_token_id=EOS)
_CONFIGS = {
    # Grouped-query attention and Llama 3's rope scaling (a small original context so the
    # scaled, smoothed and kept frequencies all occur).
    'llama': ('LlamaConfig', dict(_TINY, tie_word_embeddings=False, rope_theta=10000.0,
                                  rope_scaling=dict(rope_type='llama3', factor=8.0,
                                                    low_freq_factor=1.0, high_freq_factor=4.0,
                                                    original_max_position_embeddings=64))),
    'gemma': ('GemmaConfig', dict(_TINY, num_key_value_heads=1, hidden_act='gelu_pytorch_tanh')),
    'qwen2': ('Qwen2Config', dict(_TINY, tie_word_embeddings=False, rope_theta=1e6)),
    'gpt2': ('GPT2Config', dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                bos_token_id=2, eos_token_id=EOS)),
}


def _relative_error(ours, theirs):
  return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


@functools.lru_cache(maxsize=None)
def _hf_model(family):
  """A randomly initialised HF model (weights widened so greedy choices are clear-cut; EOS's
  output row scaled so that its logit is mostly large and positive), our config and params."""
  torch, transformers = _import_torch_side()
  torch.manual_seed(0)
  config_class, fields = _CONFIGS[family]
  hf_config = getattr(transformers, config_class)(**fields, attn_implementation='eager')
  model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
  with torch.no_grad():
    for name, weight in model.named_parameters():
      is_norm = weight.ndim == 1 and ('norm' in name or 'ln_' in name) and 'bias' not in name
      noise = torch.randn_like(weight) * (0.1 if is_norm else 0.3)
      weight.copy_((0.0 if family == 'gemma' or not is_norm else 1.0) + noise)
    probe = torch.tensor(np.random.RandomState(9).randint(3, VOCAB, (4, 8)))
    eos_sign = torch.sign(model(probe).logits[..., EOS].mean())
    model.get_output_embeddings().weight[EOS] *= 3.0 * eos_sign
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  cfg = hf_decoder.config_from_hf(hf_config.to_dict(), dtype='float32')
  return model, cfg, hf_decoder.from_hf(state, cfg)


def _lm_batch(input_lengths, target_lengths, seed=0):
  """A PrefixLMFeatureConverter-style batch: inputs (BOS first) then targets, zero-padded."""
  rng = np.random.RandomState(seed)
  width = max(i + t for i, t in zip(input_lengths, target_lengths)) + 1
  tokens, weights, causal = (np.zeros((len(input_lengths), width), np.int32) for _ in range(3))
  for row, (n, m) in enumerate(zip(input_lengths, target_lengths)):
    tokens[row, :n + m] = np.concatenate([[2], rng.randint(3, VOCAB, n + m - 1)])
    weights[row, n:n + m] = 1
    causal[row, :n + 1] = 1
  inputs = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
  return {'decoder_target_tokens': jnp.asarray(tokens), 'decoder_input_tokens': jnp.asarray(inputs),
          'decoder_loss_weights': jnp.asarray(weights), 'decoder_causal_attention': jnp.asarray(causal)}


def _hf_logits(model, tokens, prompt=None):
  """HF logits of tokens [B, T] (trailing zeros masked), the prompt fed as inputs_embeds rows."""
  import torch  # pylint: disable=g-import-not-at-top
  ids = torch.tensor(np.asarray(tokens)).long()
  mask = torch.tensor(np.asarray(decoder_models.token_mask(tokens))).long()
  embeds = model.get_input_embeddings()(ids)
  if prompt is not None:
    rows = torch.tensor(prompt)[None].expand(len(ids), -1, -1)
    embeds = torch.cat([rows, embeds], dim=1)
    mask = torch.cat([torch.ones(len(ids), len(prompt), dtype=torch.long), mask], dim=1)
  with torch.no_grad():
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits.numpy()
  return logits[:, 0 if prompt is None else len(prompt):]


def _prompt(cfg, length, seed=1):
  return np.random.RandomState(seed).normal(0, 1, (length, cfg.emb_dim)).astype(np.float32)


def _with_prompt(params, prompt):
  return {**params, 'decoder': {**params['decoder'], 'prompt': {'prompt': prompt}}}


@pytest.mark.parametrize('family', FAMILIES)
def test_logits_match_hf_with_and_without_prompt(family):
  hf_model, cfg, params = _hf_model(family)
  batch = _lm_batch([5, 3, 7], [4, 6, 2])
  tokens = batch['decoder_target_tokens']
  real = np.asarray(decoder_models.token_mask(tokens), bool)
  ours = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(cfg))
  error = _relative_error(np.asarray(ours.logits(params, batch))[real],
                          _hf_logits(hf_model, tokens)[real])
  prompt = _prompt(cfg, 4)
  prompted = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(cfg, 4))
  prompted_logits = prompted.logits(_with_prompt(params, prompt), batch)
  prompted_error = _relative_error(np.asarray(prompted_logits)[real],
                                   _hf_logits(hf_model, tokens, prompt)[real])
  print(f'{family}: relative logit error {error:.1e}, with a prompt {prompted_error:.1e}')
  assert error <= 1e-4 and prompted_error <= 1e-4


def _hf_greedy(model, batch, max_new_tokens, prompt=None):
  """HF `generate` (greedy) of each row's inputs, left-padded; cut after EOS, zero-padded."""
  import torch  # pylint: disable=g-import-not-at-top
  prefix, mask = decoder_models.left_aligned_prefix(batch['decoder_target_tokens'],
                                                    decoder_models.input_lengths(batch))
  ids, mask = torch.tensor(np.asarray(prefix)).long(), torch.tensor(np.asarray(mask)).long()
  embeds = model.get_input_embeddings()(ids)
  if prompt is not None:
    rows = torch.tensor(prompt)[None].expand(len(ids), -1, -1)
    pad = torch.zeros(len(ids), len(prompt), dtype=torch.long)
    embeds, mask = torch.cat([rows, embeds], 1), torch.cat([pad + 1, mask], 1)
    # Left padding must stay before the prompt: roll each row's padding to the front.
    order = torch.argsort(mask, dim=1, stable=True)
    embeds = torch.gather(embeds, 1, order[..., None].expand_as(embeds))
    mask = torch.gather(mask, 1, order)
  with torch.no_grad():
    out = model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=0)
  result = np.zeros((len(ids), max_new_tokens), np.int64)
  for row, sequence in zip(result, out.numpy()):
    sequence = list(sequence)
    end = sequence.index(EOS) + 1 if EOS in sequence else len(sequence)
    row[:end] = sequence[:end]
  return result


@pytest.mark.parametrize('family', FAMILIES)
def test_greedy_decoding_matches_hf_generate(family):
  hf_model, cfg, params = _hf_model(family)
  batch = _lm_batch([6, 2, 9, 4], [3, 3, 3, 3], seed=2)
  prompt = _prompt(cfg, 3, seed=4)
  model = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(cfg, 3),
                                          eos_id=EOS)
  predict = jax.jit(model.predict_batch, static_argnames='max_decode_length')
  tokens, _ = predict(_with_prompt(params, prompt), batch, max_decode_length=8)
  hf_tokens = _hf_greedy(hf_model, batch, 8, prompt)
  np.testing.assert_array_equal(np.asarray(tokens), hf_tokens)
  assert len(set((hf_tokens > 0).sum(axis=1))) > 1, 'outputs should have several lengths'


@pytest.mark.parametrize('family', FAMILIES)
def test_weights_round_trip_and_saved_directory_loads_in_transformers(family, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hf_model, cfg, params = _hf_model(family)
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  back = hf_decoder.to_hf(hf_decoder.from_hf(state, cfg), cfg)
  assert set(back) == set(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  hf_decoder.save_hf_directory(_with_prompt(params, _prompt(cfg, 2)), cfg, str(tmp_path))
  loaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, attn_implementation='eager', dtype=torch.float32).eval()
  tokens = _lm_batch([5, 3], [2, 4])['decoder_target_tokens']
  np.testing.assert_allclose(_hf_logits(loaded, tokens), _hf_logits(hf_model, tokens),
                             rtol=1e-5, atol=1e-5)
  assert hf_decoder.read_config(str(tmp_path), dtype='float32') == cfg
