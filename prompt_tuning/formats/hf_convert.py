"""Hugging Face `T5ForConditionalGeneration` state dicts <-> our parameter trees.

Works on numpy arrays (convert torch tensors with `.numpy()` first), so nothing here
imports torch. HF `Linear` weights are `[out, in]`; our kernels are `[in, out]`.
"""

from typing import Any, Mapping

import numpy as np

from prompt_tuning.model import network
from prompt_tuning.model.network import T5Config

Params = dict[str, Any]

_ENCODER_SUBLAYERS = (('pre_attention_layer_norm', 'attention'), ('pre_mlp_layer_norm', 'mlp'))
_DECODER_SUBLAYERS = (('pre_self_attention_layer_norm', 'self_attention'),
                      ('pre_cross_attention_layer_norm', 'encoder_decoder_attention'),
                      ('pre_mlp_layer_norm', 'mlp'))
_HF_ATTENTION = {'attention': 'SelfAttention', 'self_attention': 'SelfAttention',
                 'encoder_decoder_attention': 'EncDecAttention'}


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> T5Config:
  """A `T5Config` from the fields of HF's `config.json` (or `T5Config.to_dict()`)."""
  proj = hf_config.get('feed_forward_proj', 'relu')
  act = 'gelu' if proj.endswith('gelu') else proj.split('-')[-1]
  kwargs = dict(
      vocab_size=hf_config['vocab_size'], emb_dim=hf_config['d_model'],
      num_heads=hf_config['num_heads'], num_encoder_layers=hf_config['num_layers'],
      num_decoder_layers=hf_config.get('num_decoder_layers') or hf_config['num_layers'],
      head_dim=hf_config['d_kv'], mlp_dim=hf_config['d_ff'],
      mlp_activations=(act, 'linear') if proj.startswith('gated-') else (act,),
      # Transformers 5 keeps the original tying in `scale_decoder_outputs`.
      logits_via_embedding=bool(hf_config.get('scale_decoder_outputs',
                                              hf_config.get('tie_word_embeddings', True))),
      relpos_buckets=hf_config.get('relative_attention_num_buckets', 32),
      relpos_max_distance=hf_config.get('relative_attention_max_distance', 128),
      layer_norm_epsilon=hf_config.get('layer_norm_epsilon', 1e-6))
  return T5Config(**{**kwargs, **overrides})


def _key_pairs(config: T5Config):
  """Yields (our path tuple, HF key, transpose?) for every parameter."""
  yield ('token_embedder', 'embedding'), 'shared.weight', False
  mlp_names = ['wi'] if len(config.mlp_activations) == 1 else ['wi_0', 'wi_1']
  for stack, sublayers, num_layers in (
      ('encoder', _ENCODER_SUBLAYERS, config.num_encoder_layers),
      ('decoder', _DECODER_SUBLAYERS, config.num_decoder_layers)):
    yield ((stack, 'relpos_bias', 'rel_embedding'),
           f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', True)
    for i in range(num_layers):
      for j, (norm, block) in enumerate(sublayers):
        hf = f'{stack}.block.{i}.layer.{j}'
        ours = (stack, f'layers_{i}')
        yield (*ours, norm, 'scale'), f'{hf}.layer_norm.weight', False
        if block == 'mlp':
          for name in [*mlp_names, 'wo']:
            yield (*ours, 'mlp', name, 'kernel'), f'{hf}.DenseReluDense.{name}.weight', True
        else:
          for ours_name, hf_name in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o')):
            yield ((*ours, block, ours_name, 'kernel'),
                   f'{hf}.{_HF_ATTENTION[block]}.{hf_name}.weight', True)
    yield (stack, f'{stack}_norm', 'scale'), f'{stack}.final_layer_norm.weight', False
  if not config.logits_via_embedding:
    yield ('decoder', 'logits_dense', 'kernel'), 'lm_head.weight', True


def tree_from_pairs(state_dict: Mapping[str, np.ndarray], pairs, config_name: str) -> Params:
  """Our unscanned `params` tree from an HF state dict, by `pairs` of (our path tuple, HF
  key, transpose?); a one-line error naming the missing keys and `config_name`'s class."""
  params: Params = {}
  missing = []
  for path, key, transpose in pairs:
    if key not in state_dict:
      missing.append(key)
      continue
    value = np.asarray(state_dict[key])
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value.T if transpose else value
  if missing:
    raise ValueError(f'Hugging Face state dict lacks {len(missing)} weights the {config_name} '
                     f'needs, e.g. {missing[:3]}; check the config matches the checkpoint.')
  return params


def from_hf(state_dict: Mapping[str, np.ndarray], config: T5Config) -> Params:
  """HF state dict -> our `params` tree (without a prompt)."""
  params = tree_from_pairs(state_dict, _key_pairs(config), 'T5Config')
  return network.stack_layers(params, config) if config.scan_layers else params


def to_hf(params: Params, config: T5Config) -> dict[str, np.ndarray]:
  """Our `params` tree -> HF state dict (tied names included, as HF saves them)."""
  if config.scan_layers:
    params = network.unstack_layers(params, config)
  state_dict = {}
  for path, key, transpose in _key_pairs(config):
    value = params
    for name in path:
      value = value[name]
    value = np.asarray(value)
    state_dict[key] = np.ascontiguousarray(value.T if transpose else value)
  tied = ['encoder.embed_tokens.weight', 'decoder.embed_tokens.weight']
  if config.logits_via_embedding:
    tied.append('lm_head.weight')
  for key in tied:
    state_dict[key] = state_dict['shared.weight']
  return state_dict
