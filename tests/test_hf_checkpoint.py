"""Hugging Face directories: read into a run's shardings, written back tensor for tensor."""

import json
import os

import jax
import numpy as np
import pytest

from tiny_checkpoints import TINY, assert_placed, load, random_params
from prompt_tuning.formats import hf_checkpoint
from prompt_tuning.formats import hf_convert
from prompt_tuning.formats import safetensors_file
from prompt_tuning.model import network

T5_1_0 = network.T5Config(**{**TINY.__dict__, 'mlp_activations': ('relu',),
                             'logits_via_embedding': True})


@pytest.mark.parametrize('config', [TINY, T5_1_0], ids=['t5_1_1', 't5_1_0'])
def test_our_weights_round_trip_through_an_hf_directory(tmp_path, config):
  params = random_params(config)
  hf_checkpoint.save(str(tmp_path), params, config)
  stored = safetensors_file.read(str(tmp_path / 'model.safetensors'))
  assert ('lm_head.weight' in stored) == (not config.logits_via_embedding)
  assert 'encoder.embed_tokens.weight' not in stored  # Tied copies are left out, as HF does.
  assert hf_checkpoint.read_config(str(tmp_path), dtype='float32') == config
  assert_placed(*load(str(tmp_path), config), params)
  scanned = network.T5Config(**{**config.__dict__, 'scan_layers': True})
  assert_placed(*load(str(tmp_path), scanned), jax.device_get(
      network.stack_layers(params, config)))


def test_truncated_or_foreign_hf_directories_are_clear_errors(tmp_path):
  hf_checkpoint.save(str(tmp_path), random_params(), TINY)
  weights = tmp_path / 'model.safetensors'
  weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
  with pytest.raises(ValueError, match='not a complete safetensors file .*truncated'):
    load(str(tmp_path))
  weights.write_bytes(weights.read_bytes()[:20])
  with pytest.raises(ValueError, match='not a complete safetensors file .*truncated'):
    load(str(tmp_path))
  weights.unlink()
  with pytest.raises(FileNotFoundError, match='has config.json but none of model.safetensors'):
    load(str(tmp_path))
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
  with pytest.raises(ValueError, match="holds a 'bert' model"):
    load(str(tmp_path))


def _hf_tensors(directory):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return load_file(os.path.join(directory, 'model.safetensors'))


@pytest.mark.parametrize('hf_config', [dict(), dict(feed_forward_proj='relu',
                                                    tie_word_embeddings=True)],
                         ids=['t5_1_1', 't5_1_0'])
def test_hf_weights_to_ours_to_hf_are_identical(make_hf_t5, tmp_path, hf_config):
  """HF's `save_pretrained` -> our params -> our writer: the same tensors, which
  transformers loads back into the same model."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hf_model, cfg, params = make_hf_t5(**hf_config)
  hf_model.save_pretrained(tmp_path / 'hf')
  ours, read_cfg = hf_checkpoint.load_params(str(tmp_path / 'hf'), dtype='float32')
  assert read_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, ours, params)
  hf_checkpoint.save(str(tmp_path / 'back'), ours, read_cfg)
  written, original = _hf_tensors(tmp_path / 'back'), _hf_tensors(tmp_path / 'hf')
  assert set(written) == set(original)
  for key, value in original.items():
    np.testing.assert_array_equal(written[key], value, err_msg=key)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / 'back')
  for key, value in hf_model.state_dict().items():
    assert torch.equal(reloaded.state_dict()[key], value), key


def test_pytorch_bin_and_bfloat16_safetensors_load(make_hf_t5, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  hf_model, _, params = make_hf_t5()
  hf_model.save_pretrained(tmp_path / 'bin')
  os.remove(tmp_path / 'bin' / 'model.safetensors')
  torch.save(hf_model.state_dict(), tmp_path / 'bin' / 'pytorch_model.bin')
  assert_placed(*load(str(tmp_path / 'bin')), params)
  hf_model.to(torch.bfloat16).save_pretrained(tmp_path / 'bf16')
  assert safetensors_file.read(str(tmp_path / 'bf16' / 'model.safetensors'))[
      'shared.weight'].dtype.name == 'bfloat16'
  as_float = {k: v.float().numpy() for k, v in hf_model.state_dict().items()}
  expected = hf_convert.from_hf(as_float, TINY)
  assert_placed(*load(str(tmp_path / 'bf16')), expected)
