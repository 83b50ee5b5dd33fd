"""Hugging Face T5 directories (`config.json` + weights) <-> our parameters.

Reads `model.safetensors` (memory-mapped: a tensor is read when it is used; bfloat16 too),
a sharded `model.safetensors.index.json`, or `pytorch_model.bin` (needs torch, the `hf`
extra). Writes `config.json` + `model.safetensors` as `T5ForConditionalGeneration.save_pretrained`
does: the embedding's tied copies are left out, and `lm_head.weight` is written only for
an untied output layer (T5 1.1). Names and transposes are `hf_convert`'s.
"""

import json
import os
from typing import Any

import jax
import numpy as np

from prompt_tuning.formats import hf_convert
from prompt_tuning.formats import safetensors_file
from prompt_tuning.model.network import T5Config

Params = Any
CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'
_WEIGHT_FILES = (WEIGHTS, 'model.safetensors.index.json', 'pytorch_model.bin',
                 'pytorch_model.bin.index.json')
_MODEL_TYPES = ('t5', 'mt5')


def read_config(directory: str, **overrides) -> T5Config:
  """The `T5Config` of a directory's `config.json` (with `overrides`, e.g. dtype)."""
  with open(os.path.join(directory, CONFIG)) as f:
    hf_config = json.load(f)
  if hf_config.get('model_type') not in _MODEL_TYPES:
    raise ValueError(f'Hugging Face directory {directory} holds a {hf_config.get("model_type")!r} '
                     f'model; only {_MODEL_TYPES} (T5ForConditionalGeneration) load here.')
  return hf_convert.config_from_hf(hf_config, **overrides)


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f'{path} is a PyTorch pickle, which needs torch: pip install -e ".[hf]" '
                     '(or save the model as model.safetensors).') from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
  except RuntimeError as e:
    raise ValueError(f'{path} is not a complete PyTorch checkpoint ({e}); download it '
                     'again.') from None
  return {name: (value.float() if value.dtype == torch.bfloat16 else value).numpy()
          for name, value in state.items()}


def _read_weights(path: str) -> dict[str, np.ndarray]:
  if path.endswith('.index.json'):
    with open(path) as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
    tensors = {}
    for shard in shards:
      tensors.update(_read_weights(os.path.join(os.path.dirname(path), shard)))
    return tensors
  return safetensors_file.read(path) if path.endswith('.safetensors') else _read_torch(path)


def read_state_dict(directory: str) -> dict[str, np.ndarray]:
  """The HF state dict stored in a directory (safetensors: memory-mapped views)."""
  for name in _WEIGHT_FILES:
    if os.path.isfile(os.path.join(directory, name)):
      return _read_weights(os.path.join(directory, name))
  raise FileNotFoundError(f'Hugging Face directory {directory} has {CONFIG} but none of '
                          f'{", ".join(_WEIGHT_FILES)}.')


def load_params(directory: str, **config_overrides) -> tuple[Params, T5Config]:
  """(our params tree of numpy views, nothing read yet; the directory's T5Config)."""
  config = read_config(directory, **config_overrides)
  return hf_convert.from_hf(read_state_dict(directory), config), config


def config_to_hf(config: T5Config) -> dict[str, Any]:
  """The `config.json` fields of a `T5ForConditionalGeneration` with this architecture."""
  activation, *gate = config.mlp_activations
  if gate not in ([], ['linear']):
    raise ValueError(f'mlp_activations={config.mlp_activations} has no Hugging Face T5 '
                     'equivalent; it has (act,) or (act, "linear").')
  return {
      'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5',
      'vocab_size': config.vocab_size, 'd_model': config.emb_dim, 'd_kv': config.head_dim,
      'd_ff': config.mlp_dim, 'num_layers': config.num_encoder_layers,
      'num_decoder_layers': config.num_decoder_layers, 'num_heads': config.num_heads,
      'feed_forward_proj': f'gated-{activation}' if gate else activation,
      # Read by every transformers version: False = untied and unscaled output (T5 1.1).
      'tie_word_embeddings': config.logits_via_embedding,
      'relative_attention_num_buckets': config.relpos_buckets,
      'relative_attention_max_distance': config.relpos_max_distance,
      'layer_norm_epsilon': config.layer_norm_epsilon, 'dropout_rate': config.dropout_rate,
      'is_encoder_decoder': True, 'pad_token_id': 0, 'eos_token_id': 1,
      'decoder_start_token_id': 0,
  }


def save(directory: str, params: Params, config: T5Config) -> None:
  """Writes `config.json` and `model.safetensors` (a prompt in `params` is left out)."""
  state = hf_convert.to_hf(jax.device_get(params), config)
  tied = ['encoder.embed_tokens.weight', 'decoder.embed_tokens.weight']
  for key in tied + (['lm_head.weight'] if config.logits_via_embedding else []):
    del state[key]
  os.makedirs(directory, exist_ok=True)
  safetensors_file.write(os.path.join(directory, WEIGHTS), state, {'format': 'pt'})
  with open(os.path.join(directory, CONFIG), 'w') as f:
    json.dump(config_to_hf(config), f, indent=2)
