"""Hugging Face causal language models (Llama, Gemma 1, Qwen2, GPT-2) <-> our decoder-only
parameters, and their directories (`config.json` + safetensors).

Works on numpy arrays (memory-mapped views stay views: nothing is read until used), so nothing
here imports torch. HF `Linear` weights are `[out, in]` and are transposed to our `[in, out]`
kernels; GPT-2's `Conv1D` weights are `[in, out]` already, and its fused `c_attn` `[E, 3E]` is
split into query, key and value (and fused back by `to_hf`). Gemma's norm weights are stored
as they are (the norm adds 1). Gemma 2 and later (logit soft-capping, sliding windows) and
Qwen2's sliding window are not supported.
"""

import json
import os
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np

from prompt_tuning.formats import hf_checkpoint
from prompt_tuning.formats import hf_convert
from prompt_tuning.formats import safetensors_file
from prompt_tuning.model import decoder_network
from prompt_tuning.model.decoder_network import DecoderConfig

Params = dict[str, Any]
MODEL_TYPES = ('llama', 'gemma', 'qwen2', 'gpt2')
_ACTIVATIONS = {'silu': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_new'}
_LLAMA_MLP = (('wi_0', 'gate_proj'), ('wi_1', 'up_proj'), ('wo', 'down_proj'))
_LLAMA_ATTENTION = (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj'), ('out', 'o_proj'))


def _refuse(what: str) -> ValueError:
  return ValueError(f'{what} is not supported; decoder-only models load from {MODEL_TYPES} '
                    '(Gemma 1, Qwen2 without sliding window).')


def _rope_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
  """DecoderConfig rope fields from `rope_parameters` (transformers 5) or `rope_theta` +
  `rope_scaling` (published config.json files)."""
  rope = dict(hf.get('rope_parameters') or hf.get('rope_scaling') or {})
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  fields = {'rope_theta': float(rope.get('rope_theta', hf.get('rope_theta', 10000.0)))}
  if rope_type == 'llama3':
    return {**fields, 'rope_scaling_factor': float(rope['factor']),
            'rope_low_freq_factor': float(rope['low_freq_factor']),
            'rope_high_freq_factor': float(rope['high_freq_factor']),
            'rope_original_max_positions': int(rope['original_max_position_embeddings'])}
  if rope_type != 'default':
    raise _refuse(f'rope_type {rope_type!r} (only default and llama3 are)')
  return fields


def _rotary_config(hf: Mapping[str, Any], model_type: str) -> dict[str, Any]:
  heads = hf['num_attention_heads']
  act = hf.get('hidden_activation') or hf.get('hidden_act', 'silu')
  if model_type == 'gemma' and act == 'gelu':  # HF runs Gemma's legacy 'gelu' as tanh GELU.
    act = 'gelu_pytorch_tanh'
  if act not in _ACTIVATIONS:
    raise _refuse(f'hidden_act {act!r}')
  if hf.get('use_sliding_window'):
    raise _refuse('Qwen2 with use_sliding_window=true')
  attention_bias = bool(hf.get('attention_bias', False))
  return dict(
      vocab_size=hf['vocab_size'], emb_dim=hf['hidden_size'], num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or hf['hidden_size'] // heads,
      mlp_dim=hf['intermediate_size'], num_layers=hf['num_hidden_layers'], norm='rms',
      norm_epsilon=hf.get('rms_norm_eps', 1e-6), positions='rotary',
      max_positions=hf.get('max_position_embeddings', 8192),
      mlp_activations=(_ACTIVATIONS[act], 'linear'),
      qkv_bias=model_type == 'qwen2' or attention_bias, out_bias=attention_bias,
      mlp_bias=bool(hf.get('mlp_bias', False)),
      tie_embeddings=bool(hf.get('tie_word_embeddings', model_type == 'gemma')),
      norm_plus_one=model_type == 'gemma', scale_embeddings=model_type == 'gemma',
      **_rope_fields(hf))


def _gpt2_config(hf: Mapping[str, Any]) -> dict[str, Any]:
  if hf.get('activation_function', 'gelu_new') != 'gelu_new':
    raise _refuse(f'GPT-2 activation_function {hf["activation_function"]!r}')
  if not hf.get('scale_attn_weights', True) or hf.get('scale_attn_by_inverse_layer_idx'):
    raise _refuse('GPT-2 without 1/sqrt(D) attention scaling')
  width, heads = hf['n_embd'], hf['n_head']
  return dict(
      vocab_size=hf['vocab_size'], emb_dim=width, num_heads=heads, num_kv_heads=heads,
      head_dim=width // heads, mlp_dim=hf.get('n_inner') or 4 * width,
      num_layers=hf['n_layer'], norm='layer', norm_epsilon=hf.get('layer_norm_epsilon', 1e-5),
      positions='learned', max_positions=hf['n_positions'], mlp_activations=('gelu_new',),
      qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True)


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> DecoderConfig:
  """A `DecoderConfig` from HF's `config.json` fields (or `PretrainedConfig.to_dict()`)."""
  model_type = hf_config.get('model_type')
  if model_type not in MODEL_TYPES:
    raise _refuse(f'model_type {model_type!r}')
  fields = _gpt2_config(hf_config) if model_type == 'gpt2' else _rotary_config(hf_config,
                                                                               model_type)
  return DecoderConfig(**{**fields, **overrides})


def model_type(config: DecoderConfig) -> str:
  """The HF family with this architecture: gpt2 (learned positions), gemma ((1 + w) norm),
  qwen2 (biases on query/key/value only) or llama."""
  if config.positions == 'learned':
    return 'gpt2'
  if config.norm_plus_one:
    return 'gemma'
  return 'qwen2' if config.qkv_bias and not config.out_bias else 'llama'


def _llama_pairs(config: DecoderConfig) -> Iterator[tuple[tuple[str, ...], str, bool]]:
  yield ('token_embedder', 'embedding'), 'model.embed_tokens.weight', False
  for i in range(config.num_layers):
    ours, hf = ('decoder', f'layers_{i}'), f'model.layers.{i}'
    yield (*ours, 'pre_self_attention_layer_norm', 'scale'), f'{hf}.input_layernorm.weight', False
    yield (*ours, 'pre_mlp_layer_norm', 'scale'), f'{hf}.post_attention_layernorm.weight', False
    for name, hf_name in _LLAMA_ATTENTION:
      yield (*ours, 'self_attention', name, 'kernel'), f'{hf}.self_attn.{hf_name}.weight', True
      if config.out_bias if name == 'out' else config.qkv_bias:
        yield (*ours, 'self_attention', name, 'bias'), f'{hf}.self_attn.{hf_name}.bias', False
    for name, hf_name in _LLAMA_MLP:
      yield (*ours, 'mlp', name, 'kernel'), f'{hf}.mlp.{hf_name}.weight', True
      if config.mlp_bias:
        yield (*ours, 'mlp', name, 'bias'), f'{hf}.mlp.{hf_name}.bias', False
  yield ('decoder', 'decoder_norm', 'scale'), 'model.norm.weight', False
  if not config.tie_embeddings:
    yield ('decoder', 'logits_dense', 'kernel'), 'lm_head.weight', True


def _gpt2_pairs(config: DecoderConfig) -> Iterator[tuple[tuple[str, ...], str, bool]]:
  """Conv1D weights are [in, out]: no transposes. `c_attn.weight#query` etc. name the thirds
  of the fused projection (see `_split_fused`)."""
  yield ('token_embedder', 'embedding'), 'transformer.wte.weight', False
  yield ('decoder', 'position_embedder', 'embedding'), 'transformer.wpe.weight', False
  modules = [('pre_self_attention_layer_norm', 'ln_1'), ('pre_mlp_layer_norm', 'ln_2'),
             ('self_attention/query', 'attn.c_attn#query'),
             ('self_attention/key', 'attn.c_attn#key'),
             ('self_attention/value', 'attn.c_attn#value'), ('self_attention/out', 'attn.c_proj'),
             ('mlp/wi', 'mlp.c_fc'), ('mlp/wo', 'mlp.c_proj')]
  for i in range(config.num_layers):
    for ours, hf in modules:
      weight = 'scale' if ours.endswith('norm') else 'kernel'
      hf, _, part = hf.partition('#')
      suffix = f'#{part}' if part else ''
      for our_name, hf_name in ((weight, 'weight'), ('bias', 'bias')):
        yield (('decoder', f'layers_{i}', *ours.split('/'), our_name),
               f'transformer.h.{i}.{hf}.{hf_name}{suffix}', False)
  yield ('decoder', 'decoder_norm', 'scale'), 'transformer.ln_f.weight', False
  yield ('decoder', 'decoder_norm', 'bias'), 'transformer.ln_f.bias', False


def _pairs(config: DecoderConfig):
  """(our path, HF key, transpose?) for every parameter."""
  return _gpt2_pairs(config) if config.positions == 'learned' else _llama_pairs(config)


def _split_fused(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """GPT-2's `c_attn.{weight,bias}` [..., 3E] -> views `c_attn.weight#query` etc. [..., E]."""
  split = dict(state_dict)
  for key in [k for k in state_dict if '.c_attn.' in k]:
    value = np.asarray(state_dict[key])
    width = value.shape[-1] // 3
    for j, part in enumerate(('query', 'key', 'value')):
      split[f'{key}#{part}'] = value[..., j * width:(j + 1) * width]
  return split


def from_hf(state_dict: Mapping[str, np.ndarray], config: DecoderConfig) -> Params:
  """HF state dict -> our `params` tree (without a prompt; views where no copy is needed)."""
  params = hf_convert.tree_from_pairs(_split_fused(state_dict), _pairs(config), 'DecoderConfig')
  return decoder_network.stack_layers(params, config) if config.scan_layers else params


def to_hf(params: Params, config: DecoderConfig) -> dict[str, np.ndarray]:
  """Our `params` tree -> HF state dict (a tied `lm_head.weight` included, as HF's
  `state_dict()` has it; a prompt in `params` is left out)."""
  if config.scan_layers:
    params = decoder_network.unstack_layers(params, config)
  state_dict = {}
  for path, key, transpose in _pairs(config):
    value = params
    for name in path:
      value = value[name]
    value = np.asarray(value)
    state_dict[key] = np.ascontiguousarray(value.T if transpose else value)
  for key in [k for k in state_dict if k.endswith('#query')]:
    stem = key[:-len('#query')]
    state_dict[stem] = np.concatenate(
        [state_dict.pop(f'{stem}#{part}') for part in ('query', 'key', 'value')], axis=-1)
  if config.tie_embeddings:
    gpt2 = config.positions == 'learned'
    state_dict['lm_head.weight'] = state_dict[
        'transformer.wte.weight' if gpt2 else 'model.embed_tokens.weight']
  return state_dict


_ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'gemma': 'GemmaForCausalLM',
                  'qwen2': 'Qwen2ForCausalLM', 'gpt2': 'GPT2LMHeadModel'}


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
  """The `config.json` fields of the HF causal LM with this architecture (see `model_type`)."""
  family = model_type(config)
  fields = {'architectures': [_ARCHITECTURES[family]], 'model_type': family,
            'vocab_size': config.vocab_size, 'tie_word_embeddings': config.tie_embeddings}
  if family == 'gpt2':
    return {**fields, 'n_embd': config.emb_dim, 'n_head': config.num_heads,
            'n_layer': config.num_layers, 'n_positions': config.max_positions,
            'n_inner': config.mlp_dim, 'layer_norm_epsilon': config.norm_epsilon,
            'activation_function': 'gelu_new'}
  activation = {ours: hf for hf, ours in _ACTIVATIONS.items()}[config.mlp_activations[0]]
  scaling = None
  if config.llama3_scaling:
    factor, low, high, original = config.llama3_scaling
    scaling = {'rope_type': 'llama3', 'factor': factor, 'low_freq_factor': low,
               'high_freq_factor': high, 'original_max_position_embeddings': original}
  return {**fields, 'hidden_size': config.emb_dim, 'num_attention_heads': config.num_heads,
          'num_key_value_heads': config.num_kv_heads, 'head_dim': config.head_dim,
          'intermediate_size': config.mlp_dim, 'num_hidden_layers': config.num_layers,
          'rms_norm_eps': config.norm_epsilon, 'hidden_act': activation,
          'rope_theta': config.rope_theta, 'rope_scaling': scaling,
          'max_position_embeddings': config.max_positions,
          'attention_bias': config.out_bias, 'mlp_bias': config.mlp_bias}


def save_hf_directory(params: Params, config: DecoderConfig, directory: str,
                      eos_id: Optional[int] = None) -> None:
  """Writes `config.json` (with `eos_token_id` if given) and `model.safetensors` that
  `AutoModelForCausalLM.from_pretrained` loads (a prompt in `params` and the tied
  `lm_head.weight` are left out)."""
  state = to_hf(jax.device_get(params), config)
  if config.tie_embeddings:
    del state['lm_head.weight']
  os.makedirs(directory, exist_ok=True)
  safetensors_file.write(os.path.join(directory, hf_checkpoint.WEIGHTS), state, {'format': 'pt'})
  with open(os.path.join(directory, hf_checkpoint.CONFIG), 'w') as f:
    fields = config_to_hf(config)
    if eos_id is not None:
      fields['eos_token_id'] = eos_id
    json.dump(fields, f, indent=2)


def read_config(directory: str, **overrides) -> DecoderConfig:
  """The `DecoderConfig` of a directory's `config.json` (with `overrides`, e.g. dtype)."""
  with open(os.path.join(directory, hf_checkpoint.CONFIG)) as f:
    return config_from_hf(json.load(f), **overrides)


def load_params(directory: str, **config_overrides) -> tuple[Params, DecoderConfig]:
  """(our unscanned params tree of numpy views, nothing read yet; the directory's config).
  `initial_checkpoint.place` reads them shard by shard into a (possibly scanned) model."""
  config = read_config(directory, **config_overrides)
  unscanned = DecoderConfig(**{**config.__dict__, 'scan_layers': False})
  return from_hf(hf_checkpoint.read_state_dict(directory), unscanned), config
