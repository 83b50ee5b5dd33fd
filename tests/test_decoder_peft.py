"""PEFT CAUSAL_LM prompt-tuning adapters in and out of our decoder-only models: a prompt we
export gives our logits in the real `peft` on the Hugging Face model, and one trained in
`peft` imports here with the same logits (tiny random Llama with grouped-query attention)."""

import json

import jax
import numpy as np
import pytest

from prompt_tuning.formats import prompt_formats
from prompt_tuning.model import decoder_models
from prompt_tuning.model import decoder_network
from test_decoder_parity import _hf_model, _lm_batch, _prompt, _relative_error, _with_prompt

LENGTH = 4
_fresh_hf_model = _hf_model.__wrapped__  # PEFT wraps the HF model: not the cached one.


def _our_logits(cfg, params, prompt, batch):
  """Our logits [B, T, V] of `batch` behind `prompt` [P, E], at the real tokens only."""
  model = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(cfg, len(prompt)))
  return np.asarray(jax.jit(model.logits)(_with_prompt(params, prompt), batch))


def _peft_logits(peft_model, batch, length):
  """PEFT's logits [B, T, V] of the same tokens (it returns the P virtual positions first)."""
  import torch  # pylint: disable=g-import-not-at-top
  tokens = np.asarray(batch['decoder_target_tokens'])
  mask = np.asarray(decoder_models.token_mask(tokens))
  with torch.no_grad():
    logits = peft_model(input_ids=torch.tensor(tokens).long(),
                        attention_mask=torch.tensor(mask).long()).logits.numpy()
  return logits[:, length:]


def _error(ours, theirs, batch):
  real = np.asarray(decoder_models.token_mask(batch['decoder_target_tokens']), bool)
  return _relative_error(ours[real], theirs[real])


def test_exported_causal_lm_adapter_gives_our_logits_in_peft(peft, tmp_path):
  hf_model, cfg, params = _fresh_hf_model('llama')
  prompt = _prompt(cfg, LENGTH)
  prompt_formats.save_peft(str(tmp_path), prompt, task_type='CAUSAL_LM')
  config = json.loads((tmp_path / 'adapter_config.json').read_text())
  assert (config['task_type'], config['num_transformer_submodules']) == ('CAUSAL_LM', 1)
  peft_model = peft.PeftModel.from_pretrained(hf_model, str(tmp_path)).eval()
  batch = _lm_batch([5, 3], [4, 6])
  assert _error(_our_logits(cfg, params, prompt, batch),
                _peft_logits(peft_model, batch, LENGTH), batch) <= 1e-4


def test_causal_lm_adapter_trained_in_peft_imports_here(peft, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  hf_model, cfg, params = _fresh_hf_model('llama')
  peft_model = peft.get_peft_model(hf_model, peft.PromptTuningConfig(
      task_type='CAUSAL_LM', num_virtual_tokens=LENGTH))
  batch = _lm_batch([5, 3], [4, 6], seed=1)
  tokens = torch.tensor(np.asarray(batch['decoder_target_tokens'])).long()
  mask = torch.tensor(np.asarray(decoder_models.token_mask(tokens.numpy()))).long()
  labels = tokens.masked_fill(mask == 0, -100)
  optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
  for _ in range(2):
    peft_model(input_ids=tokens, attention_mask=mask, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
  peft_model.save_pretrained(str(tmp_path))
  prompt = prompt_formats.load_peft(str(tmp_path), task_type='CAUSAL_LM')
  trained = peft_model.prompt_encoder['default'].embedding.weight.detach().numpy()
  np.testing.assert_array_equal(prompt, trained)
  assert _error(_our_logits(cfg, params, prompt, batch),
                _peft_logits(peft_model.eval(), batch, LENGTH), batch) <= 1e-4


def test_a_causal_lm_adapter_is_refused_for_a_t5_model(tmp_path):
  prompt_formats.save_peft(str(tmp_path), np.ones((3, 8), np.float32), task_type='CAUSAL_LM')
  with pytest.raises(ValueError, match='has task_type CAUSAL_LM; this model takes SEQ_2_SEQ_LM'):
    prompt_formats.load_peft(str(tmp_path), task_type='SEQ_2_SEQ_LM')
