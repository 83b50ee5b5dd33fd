"""PEFT prompt-tuning adapters <-> our prompt `[P, E]`.

An adapter is a directory with `adapter_config.json` (`peft_type` PROMPT_TUNING,
`task_type` SEQ_2_SEQ_LM, `num_virtual_tokens` P, `token_dim` E,
`num_transformer_submodules`) and `adapter_model.safetensors` holding one tensor,
`prompt_embeddings` `[num_transformer_submodules * P, E]`. For encoder-decoder models PEFT
allocates a block of P rows per stack (`num_transformer_submodules` = 2, its default for
SEQ_2_SEQ_LM), yet prompt tuning prepends only the first block to the encoder's input
embeddings (extending the attention mask); the second block is never read. So export
writes our prompt as the first block and zeros as the second, and import takes the first
P rows. Our `.npy` prompts are written by `checkpoints.export_prompt` and read with
`load_npy` (by `initializers.from_npy`).
"""

import json
import os
from typing import Optional

import numpy as np

from prompt_tuning.formats import safetensors_file

CONFIG = 'adapter_config.json'
WEIGHTS = 'adapter_model.safetensors'
KEY = 'prompt_embeddings'
SEQ2SEQ_BLOCKS = 2  # PEFT's num_transformer_submodules for SEQ_2_SEQ_LM: encoder, decoder.


NPY_MAGIC = b'\x93NUMPY'


def load_npy(path: str) -> np.ndarray:
  """A prompt `[P, E]` from a `.npy` file, or a one-line error for anything else."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'prompt file {path} does not exist; check PROMPT_FILE.')
  with open(path, 'rb') as f:
    if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
      raise ValueError(f'prompt file {path} is not a .npy array (no numpy header); export one '
                       'with `python -m prompt_tuning.export --format=npy` or np.save.')
  value = np.load(path)
  if value.ndim != 2 or not np.issubdtype(value.dtype, np.floating):
    raise ValueError(f'prompt file {path} holds a {value.dtype} array of shape {value.shape}; '
                     'a prompt is a 2-D float array [PROMPT_LENGTH, emb_dim].')
  return value


def save_peft(directory: str, prompt: np.ndarray, base_model: Optional[str] = None) -> None:
  """Writes `prompt` [P, E] as a PEFT adapter; `base_model` (e.g. 'google/t5-base-lm-adapt')
  lets `AutoPeftModelForSeq2SeqLM.from_pretrained` find the frozen model."""
  prompt = np.asarray(prompt, np.float32)
  length, width = prompt.shape
  config = {
      'peft_type': 'PROMPT_TUNING', 'task_type': 'SEQ_2_SEQ_LM', 'num_virtual_tokens': length,
      'token_dim': width, 'num_transformer_submodules': SEQ2SEQ_BLOCKS,
      'prompt_tuning_init': 'RANDOM', 'base_model_name_or_path': base_model,
      'inference_mode': True,  # PEFT fills num_layers and num_attention_heads from the model.
  }
  rows = np.concatenate([prompt, np.zeros_like(prompt)])  # The decoder block, unused.
  os.makedirs(directory, exist_ok=True)
  safetensors_file.write(os.path.join(directory, WEIGHTS), {KEY: rows}, {'format': 'pt'})
  with open(os.path.join(directory, CONFIG), 'w') as f:
    json.dump(config, f, indent=2)


def load_peft(directory: str) -> np.ndarray:
  """The encoder prompt [P, E] (float32) of a PEFT prompt-tuning adapter."""
  where = f'PEFT adapter {directory}'
  if not os.path.isfile(os.path.join(directory, CONFIG)):
    raise FileNotFoundError(f'{where} has no {CONFIG}.')
  with open(os.path.join(directory, CONFIG)) as f:
    config = json.load(f)
  if config.get('peft_type') != 'PROMPT_TUNING':
    raise ValueError(f'{where} is a {config.get("peft_type")} adapter; only prompt-tuning adapters '
                     '(peft_type PROMPT_TUNING) hold a prompt.')
  if config.get('task_type') != 'SEQ_2_SEQ_LM':
    raise ValueError(f'{where} has task_type {config.get("task_type")}; a T5 prompt is a '
                     'SEQ_2_SEQ_LM adapter.')
  if not os.path.isfile(os.path.join(directory, WEIGHTS)):
    raise FileNotFoundError(f'{where} has no {WEIGHTS}; save it with PEFT\'s '
                            'save_pretrained(safe_serialization=True).')
  rows = safetensors_file.read(os.path.join(directory, WEIGHTS)).get(KEY)
  if rows is None:
    raise ValueError(f'{where}: {WEIGHTS} holds no {KEY} tensor.')
  length = config['num_virtual_tokens']
  blocks = config.get('num_transformer_submodules') or SEQ2SEQ_BLOCKS
  expected = (blocks * length, config.get('token_dim') or rows.shape[-1])
  if rows.shape != expected:
    raise ValueError(f'{where}: {KEY} is {rows.shape} but its config says {expected} '
                     f'({blocks} blocks of num_virtual_tokens={length}).')
  return np.asarray(rows[:length], np.float32)
