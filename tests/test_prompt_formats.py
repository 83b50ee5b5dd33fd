"""Prompts out and in: PEFT adapters that the real `peft` runs with our logits, `.npy`, and
the export command line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import make_batch
from tiny_checkpoints import random_params
from prompt_tuning.formats import hf_checkpoint
from prompt_tuning.formats import prompt_formats
from prompt_tuning.formats import safetensors_file
from prompt_tuning.inference import prompt_bank
from prompt_tuning.model import network
from prompt_tuning.training import checkpoints
from prompt_tuning.training import partitioning
from prompt_tuning.training import trainer

PROMPT = np.random.RandomState(1).uniform(-0.5, 0.5, (5, 32)).astype(np.float32)


def test_peft_adapter_holds_the_prompt_in_the_encoder_block(tmp_path):
  prompt_formats.save_peft(str(tmp_path), PROMPT, base_model='google/t5-base-lm-adapt')
  config = json.loads((tmp_path / 'adapter_config.json').read_text())
  assert {k: config[k] for k in ('peft_type', 'task_type', 'num_virtual_tokens', 'token_dim',
                                 'num_transformer_submodules', 'base_model_name_or_path')} == {
      'peft_type': 'PROMPT_TUNING', 'task_type': 'SEQ_2_SEQ_LM', 'num_virtual_tokens': 5,
      'token_dim': 32, 'num_transformer_submodules': 2,
      'base_model_name_or_path': 'google/t5-base-lm-adapt'}
  rows = safetensors_file.read(str(tmp_path / 'adapter_model.safetensors'))['prompt_embeddings']
  np.testing.assert_array_equal(rows, np.concatenate([PROMPT, np.zeros_like(PROMPT)]))
  np.testing.assert_array_equal(prompt_formats.load_peft(str(tmp_path)), PROMPT)
  config['num_transformer_submodules'] = 1  # An encoder-only block also imports.
  (tmp_path / 'adapter_config.json').write_text(json.dumps(config))
  safetensors_file.write(str(tmp_path / 'adapter_model.safetensors'),
                         {'prompt_embeddings': PROMPT}, {'format': 'pt'})
  np.testing.assert_array_equal(prompt_formats.load_peft(str(tmp_path)), PROMPT)


@pytest.mark.parametrize('change,message', [
    (dict(peft_type='LORA', r=8, target_modules=['q', 'v']),
     'is a LORA adapter; only prompt-tuning adapters'),
    (dict(task_type='TOKEN_CLS'), 'has task_type TOKEN_CLS; this model takes SEQ_2_SEQ_LM or '
     'CAUSAL_LM adapters'),
    (dict(num_virtual_tokens=4), r'prompt_embeddings is \(10, 32\) but its config says \(8, 32\)'),
])
def test_other_adapters_are_clear_errors(tmp_path, change, message):
  prompt_formats.save_peft(str(tmp_path), PROMPT)
  config = json.loads((tmp_path / 'adapter_config.json').read_text())
  (tmp_path / 'adapter_config.json').write_text(json.dumps({**config, **change}))
  with pytest.raises(ValueError, match=message):
    prompt_formats.load_peft(str(tmp_path))


def _relative_error(ours, theirs, batch):
  real = np.asarray(batch['decoder_target_tokens']) > 0
  ours, theirs = np.asarray(ours)[real], theirs[real]
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _our_logits(cfg, params, prompt, batch):
  module = network.Transformer(cfg, prompt_length=len(prompt))
  params = {**params, 'encoder': {**params['encoder'], 'prompt': {'prompt': prompt}}}
  return jax.jit(module.apply)({'params': params}, batch['encoder_input_tokens'],
                               batch['decoder_input_tokens'], batch['decoder_target_tokens'])


def _peft_logits(peft_model, batch):
  import torch  # pylint: disable=g-import-not-at-top
  tokens = torch.tensor(np.asarray(batch['encoder_input_tokens'])).long()
  with torch.no_grad():
    return peft_model(input_ids=tokens, attention_mask=(tokens > 0).long(),
                      decoder_input_ids=torch.tensor(
                          np.asarray(batch['decoder_input_tokens'])).long()).logits.numpy()


def test_exported_adapter_gives_our_logits_in_peft(make_hf_t5, peft, tmp_path):
  hf_model, cfg, params = make_hf_t5()
  prompt_formats.save_peft(str(tmp_path), PROMPT)
  peft_model = peft.PeftModel.from_pretrained(hf_model, str(tmp_path)).eval()
  batch = make_batch([7, 3], [4, 2])
  assert _relative_error(_our_logits(cfg, params, PROMPT, batch),
                         _peft_logits(peft_model, batch), batch) <= 1e-4


def test_adapter_trained_in_peft_imports_here(make_hf_t5, peft, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  hf_model, cfg, params = make_hf_t5(seed=2)
  peft_model = peft.get_peft_model(hf_model, peft.PromptTuningConfig(
      task_type='SEQ_2_SEQ_LM', num_virtual_tokens=6))
  batch = make_batch([7, 3], [4, 2], seed=1)
  tokens = torch.tensor(np.asarray(batch['encoder_input_tokens'])).long()
  labels = torch.tensor(np.asarray(batch['decoder_target_tokens'])).long()
  optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
  for _ in range(2):
    peft_model(input_ids=tokens, attention_mask=(tokens > 0).long(),
               labels=labels.masked_fill(labels == 0, -100)).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
  peft_model.save_pretrained(str(tmp_path))
  prompt = prompt_formats.load_peft(str(tmp_path))
  trained = peft_model.prompt_encoder['default'].embedding.weight.detach().numpy()
  np.testing.assert_array_equal(prompt, trained[:6])  # The encoder block of PEFT's 2 x 6 rows.
  assert _relative_error(_our_logits(cfg, params, prompt, batch),
                         _peft_logits(peft_model.eval(), batch), batch) <= 1e-4


def _export(*args):
  """Runs the command line, which must succeed."""
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, '-m', 'prompt_tuning.export', *args],
                          capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


def _run_with_prompts(model_dir, prompts):
  """A MODEL_DIR whose checkpoints at steps 2 and 4 hold `prompts`."""
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])
  replicated = partitioning.replicated(mesh)
  run_checkpoints = checkpoints.RunCheckpoints(str(model_dir))
  for step, prompt in prompts.items():
    trainable = {'encoder': {'prompt': {'prompt': prompt}}}
    state = trainer.init_state(trainable, trainer.adafactor(), 0,
                               jax.tree.map(lambda _: replicated, trainable), mesh)
    run_checkpoints.save(state.replace(step=state.step + step), {  # The meta train writes.
        'step': step, 'frozen': {'path': 'random init (seed 0)', 'fingerprint': 'f00d'},
        'trainable_shapes': checkpoints.trainable_shapes(trainable)})
  run_checkpoints.close()


def test_export_command_writes_npy_peft_and_hf_and_imports_peft(tmp_path):
  _run_with_prompts(tmp_path / 'run', {2: PROMPT + 1, 4: PROMPT})
  _export(f'--model_dir={tmp_path / "run"}', '--format=peft', f'--output={tmp_path / "adapter"}')
  np.testing.assert_array_equal(prompt_formats.load_peft(str(tmp_path / 'adapter')), PROMPT)
  _export(f'--peft_adapter={tmp_path / "adapter"}', f'--output={tmp_path / "prompt.npy"}')
  np.testing.assert_array_equal(np.load(tmp_path / 'prompt.npy'), PROMPT)
  np.testing.assert_array_equal(prompt_bank.run_prompt(str(tmp_path / 'run'), step=2),
                                PROMPT + 1)
  with pytest.raises(ValueError, match=r'no checkpoint at step 3; it has \[2, 4\]'):
    prompt_bank.run_prompt(str(tmp_path / 'run'), step=3)
  with pytest.raises(FileNotFoundError, match='has no checkpoints/<step>/ to export'):
    prompt_bank.run_prompt(str(tmp_path / 'nowhere'))
  params = random_params()
  checkpoints.save_params(str(tmp_path / 'params'), params)  # As a model-tuning run does.
  _export('--format=hf', f'--checkpoint={tmp_path / "params"}', f'--output={tmp_path / "hf"}',
          '--gin_file=models/t5_1_1_tiny.gin', '--gin.network.T5Config.vocab_size=64')
  jax.tree.map(np.testing.assert_array_equal,
               hf_checkpoint.load_params(str(tmp_path / 'hf'))[0], params)
