"""Our decoder-only models equal Hugging Face's Llama, Gemma, Qwen2 and GPT-2 on the same
weights: logits with and without a prompt, greedy decoding, weight conversion both ways and
saved directories; a mixed prompt-table batch equals each prompt alone; only targets carry loss.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
import gin

from conftest import _import_torch_side
from prompt_tuning import gin_config
from prompt_tuning.formats import hf_checkpoint
from prompt_tuning.formats import hf_decoder
from prompt_tuning.formats import initial_checkpoint
from prompt_tuning.model import decoder_models
from prompt_tuning.model import decoder_network
from prompt_tuning.model import models
from prompt_tuning.model import prompts
from prompt_tuning.training import partitioning

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
  return {'decoder_target_tokens': jnp.asarray(tokens),
          'decoder_input_tokens': jnp.asarray(inputs),
          'decoder_loss_weights': jnp.asarray(weights),
          'decoder_causal_attention': jnp.asarray(causal)}


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
  error = _relative_error(np.asarray(jax.jit(ours.logits)(params, batch))[real],
                          _hf_logits(hf_model, tokens)[real])
  prompt = _prompt(cfg, 4)
  prompted = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(cfg, 4))
  prompted_logits = jax.jit(prompted.logits)(_with_prompt(params, prompt), batch)
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
  hf_decoder.save_hf_directory(_with_prompt(params, _prompt(cfg, 2)), cfg, str(tmp_path),
                               eos_id=EOS)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, attn_implementation='eager', dtype=torch.float32).eval()
  tokens = _lm_batch([5, 3], [2, 4])['decoder_target_tokens']
  np.testing.assert_allclose(_hf_logits(loaded, tokens), _hf_logits(hf_model, tokens),
                             rtol=1e-5, atol=1e-5)
  assert hf_decoder.read_config(str(tmp_path), dtype='float32') == cfg
  assert loaded.config.eos_token_id == EOS


def test_mixed_prompt_table_batch_equals_each_prompt_alone():
  """Each row of a mixed batch equals HF fed that row's prompt alone. GPT-2: its learned
  positions would show any shift from the table's left padding."""
  hf_model, cfg, params = _hf_model('gpt2')
  shown = [_prompt(cfg, 2, seed=5), _prompt(cfg, 5, seed=6)]
  batch = {**_lm_batch([4, 6, 3, 5], [3, 2, 4, 3], seed=7), 'prompt_ids': jnp.array([1, 0, 0, 1])}
  table = prompts.pad_prompts(shown)
  frozen = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(cfg),
                                           eos_id=EOS)
  logits = np.asarray(jax.jit(frozen.logits)(params, batch, prompt_table=table))
  tokens, _ = jax.jit(frozen.predict_batch, static_argnames='max_decode_length')(
      params, batch, max_decode_length=6, prompt_table=table)
  for prompt_id, prompt in enumerate(shown):
    rows = np.flatnonzero(np.asarray(batch['prompt_ids']) == prompt_id)
    alone = {k: v[rows] for k, v in batch.items() if k != 'prompt_ids'}
    real = np.asarray(decoder_models.token_mask(alone['decoder_target_tokens']), bool)
    hf_logits = _hf_logits(hf_model, alone['decoder_target_tokens'], prompt)
    assert _relative_error(logits[rows][real], hf_logits[real]) <= 1e-4
    np.testing.assert_array_equal(np.asarray(tokens)[rows],
                                  _hf_greedy(hf_model, alone, 6, prompt))


@pytest.mark.parametrize('loss_chunk', [128, 4])
def test_only_targets_carry_loss(loss_chunk):
  """The loss is the mean target-token cross-entropy of HF's logits (prompt run too); inputs,
  padding and the prompt are weightless, `decoder_input_tokens` is not read. Whether the
  loss takes the positions in one chunk or in several (`loss_chunk`) changes nothing."""
  hf_model, cfg, params = _hf_model('qwen2')
  cfg = dataclasses.replace(cfg, loss_chunk=loss_chunk)
  prompt = _prompt(cfg, 3)
  model = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(cfg, 3),
                                          z_loss=0.0)
  params = _with_prompt(params, prompt)
  batch = _lm_batch([5, 3], [2, 4], seed=8)
  loss_fn = jax.jit(model.loss_fn)
  loss, metrics = loss_fn(params, batch)
  tokens = np.asarray(batch['decoder_target_tokens'])
  log_probs = jax.nn.log_softmax(_hf_logits(hf_model, tokens, prompt))
  weights = np.asarray(batch['decoder_loss_weights'])
  picked = np.take_along_axis(np.asarray(log_probs)[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  expected = -(picked * weights[:, 1:]).sum() / weights.sum()
  assert metrics['num_tokens'] == weights.sum() == 6
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(model.score_batch)(params, batch),
                             (picked * weights[:, 1:]).sum(axis=1), rtol=1e-5)
  scrambled = {**batch, 'decoder_input_tokens': batch['decoder_input_tokens'][:, ::-1]}
  assert loss_fn(params, scrambled)[0] == loss
  changed = {**batch, 'decoder_target_tokens': batch['decoder_target_tokens'].at[0, 6].set(9)}
  assert loss_fn(params, changed)[0] != loss


def test_the_loss_in_chunks_equals_the_loss_of_all_logits_and_so_does_its_gradient():
  """Gemma (tied output layer, scaled embeddings), z-loss and label smoothing on: the loss
  and the prompt's gradient taken in chunks of 3 positions equal those from all logits."""
  _, cfg, params = _hf_model('gemma')
  params = _with_prompt(params, _prompt(cfg, 3))
  batch = _lm_batch([5, 3], [2, 4], seed=8)
  model = lambda chunk: decoder_models.DecoderOnlyModel(
      decoder_network.DecoderOnlyTransformer(dataclasses.replace(cfg, loss_chunk=chunk), 3),
      z_loss=1e-4, label_smoothing=0.1)

  def from_all_logits(params):
    logits = model(128).logits(params, batch)[:, :-1]  # [B, T-1, V] at once.
    weights = batch['decoder_loss_weights'][:, 1:]
    token_loss, _ = models.cross_entropy(logits, batch['decoder_target_tokens'][:, 1:], 1e-4,
                                         0.1)
    return jnp.sum(token_loss * weights) / weights.sum()

  value, grad = jax.value_and_grad(lambda params: model(3).loss_fn(params, batch)[0])(params)
  expected, expected_grad = jax.value_and_grad(from_all_logits)(params)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  np.testing.assert_allclose(grad['decoder']['prompt']['prompt'],
                             expected_grad['decoder']['prompt']['prompt'], rtol=1e-5, atol=1e-7)
  assert np.abs(expected_grad['decoder']['prompt']['prompt']).max() > 1e-3


def test_hf_directory_placed_into_scanned_layers(tmp_path):
  hf_model, cfg, _ = _hf_model('llama')
  scanned_cfg = decoder_network.DecoderConfig(**{**cfg.__dict__, 'scan_layers': True})
  hf_model.save_pretrained(tmp_path)
  loaded, read_cfg = hf_decoder.load_params(str(tmp_path), dtype='float32', scan_layers=True)
  assert read_cfg == scanned_cfg
  model = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(scanned_cfg),
                                          eos_id=EOS)
  batch = _lm_batch([6, 2, 9, 4], [3, 3, 3, 3], seed=2)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          abstract)
  scanned = initial_checkpoint.place(traverse_util.flatten_dict(loaded, sep='/'), abstract)
  assert scanned['decoder']['layers']['mlp']['wo']['kernel'].shape[0] == cfg.num_layers
  tokens = batch['decoder_target_tokens']
  real = np.asarray(decoder_models.token_mask(tokens), bool)
  assert _relative_error(np.asarray(jax.jit(model.logits)(scanned, batch))[real],
                         _hf_logits(hf_model, tokens)[real]) <= 1e-4
  predicted, _ = jax.jit(model.predict_batch, static_argnames='max_decode_length')(
      scanned, batch, max_decode_length=5)
  np.testing.assert_array_equal(predicted, _hf_greedy(hf_model, batch, 5))


# Parameter counts of the published checkpoints (tied output layers counted once).
PUBLISHED = {'llama_3_2_1b': 1_235_814_400, 'llama_3_2_3b': 3_212_749_824,
             'gemma_2b': 2_506_172_416, 'qwen2_5_0_5b': 494_032_768,
             'qwen2_5_1_5b': 1_543_714_304, 'gpt2': 124_439_808, 'decoder_tiny': 2_074_784}


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_gin_files_build_with_published_parameter_counts(name):
  gin_config.parse([f'models/{name}.gin'],
                   ['models.build_model.prompt_length = 10'])
  try:
    model = models.build_model()
  finally:
    gin.clear_config()
  shapes = model.batch_shapes({'inputs': 8, 'targets': 4}, 2)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), shapes)  # Nothing allocated.
  assert params['decoder']['prompt']['prompt'].shape == (10, model.module.config.emb_dim)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count - 10 * model.module.config.emb_dim == PUBLISHED[name]
  mesh_specs = partitioning.mesh_specs(model.logical_axes(shapes))
  assert mesh_specs['token_embedder']['embedding'] == jax.sharding.PartitionSpec('model', None)


def test_unsupported_hf_configs_are_one_line_errors():
  with pytest.raises(ValueError, match=r"model_type 'gemma2' is not supported; .*'gpt2'"):
    hf_decoder.config_from_hf({'model_type': 'gemma2'})
  qwen = {**_CONFIGS['qwen2'][1], 'model_type': 'qwen2', 'use_sliding_window': True}
  with pytest.raises(ValueError, match='use_sliding_window=true is not supported'):
    hf_decoder.config_from_hf(qwen)
  with pytest.raises(ValueError, match='num_heads=4 must be a multiple of num_kv_heads=3'):
    decoder_network.DecoderConfig(num_heads=4, num_kv_heads=3)
