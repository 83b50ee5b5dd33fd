"""PEFT prompt-tuning adapters <-> our prompt `[P, E]`.

An adapter is a directory with `adapter_config.json` (`peft_type` PROMPT_TUNING,
`task_type`, `num_virtual_tokens` P, `token_dim` E, `num_transformer_submodules`) and
`adapter_model.safetensors` holding one tensor, `prompt_embeddings`
`[num_transformer_submodules * P, E]`.
- `SEQ_2_SEQ_LM` (T5): PEFT allocates a block of P rows per stack
  (`num_transformer_submodules` = 2, its default), yet prompt tuning prepends only the first
  block to the encoder's input embeddings (extending the attention mask); the second block is
  never read. So export writes our prompt as the first block and zeros as the second, and
  import takes the first P rows.
- `CAUSAL_LM` (decoder-only models): one block, prepended to the input embeddings (PEFT
  extends the attention mask, and the positions run on through the prompt, as ours do).
Our `.npy` prompts are written by `checkpoints.export_prompt` and read with `load_npy` (by
`initializers.from_npy`).
"""

import json
import os
from typing import Optional

import numpy as np

from prompt_tuning.formats import safetensors_file

CONFIG = 'adapter_config.json'
WEIGHTS = 'adapter_model.safetensors'
KEY = 'prompt_embeddings'
# PEFT's task types for prompt tuning, and how many P-row blocks (num_transformer_submodules)
# each allocates; our prompt is the first block.
TASK_BLOCKS = {'SEQ_2_SEQ_LM': 2, 'CAUSAL_LM': 1}
# The task type of a prompt, by its parameter path (the model's `prompt_path`).
TASK_TYPES = {'encoder/prompt/prompt': 'SEQ_2_SEQ_LM', 'decoder/prompt/prompt': 'CAUSAL_LM'}


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


def save_peft(directory: str, prompt: np.ndarray, base_model: Optional[str] = None,
              task_type: str = 'SEQ_2_SEQ_LM') -> None:
  """Writes `prompt` [P, E] as a PEFT adapter for `task_type` (`TASK_BLOCKS`); `base_model`
  (e.g. 'google/t5-base-lm-adapt') lets PEFT's `AutoPeftModel...from_pretrained` find the
  frozen model."""
  prompt = np.asarray(prompt, np.float32)
  length, width = prompt.shape
  blocks = TASK_BLOCKS[task_type]
  config = {
      'peft_type': 'PROMPT_TUNING', 'task_type': task_type, 'num_virtual_tokens': length,
      'token_dim': width, 'num_transformer_submodules': blocks,
      'prompt_tuning_init': 'RANDOM', 'base_model_name_or_path': base_model,
      'inference_mode': True,  # PEFT fills num_layers and num_attention_heads from the model.
  }
  rows = np.concatenate([prompt] + [np.zeros_like(prompt)] * (blocks - 1))  # Unused blocks.
  os.makedirs(directory, exist_ok=True)
  safetensors_file.write(os.path.join(directory, WEIGHTS), {KEY: rows}, {'format': 'pt'})
  with open(os.path.join(directory, CONFIG), 'w') as f:
    json.dump(config, f, indent=2)


def load_peft(directory: str, task_type: Optional[str] = None) -> np.ndarray:
  """The prompt [P, E] (float32) of a PEFT prompt-tuning adapter: the first block. With
  `task_type`, an adapter for another kind of model is refused."""
  where = f'PEFT adapter {directory}'
  if not os.path.isfile(os.path.join(directory, CONFIG)):
    raise FileNotFoundError(f'{where} has no {CONFIG}.')
  with open(os.path.join(directory, CONFIG)) as f:
    config = json.load(f)
  if config.get('peft_type') != 'PROMPT_TUNING':
    raise ValueError(f'{where} is a {config.get("peft_type")} adapter; only prompt-tuning adapters '
                     '(peft_type PROMPT_TUNING) hold a prompt.')
  kind = config.get('task_type')
  if kind not in TASK_BLOCKS or task_type not in (None, kind):
    wanted = task_type or ' or '.join(TASK_BLOCKS)
    raise ValueError(f'{where} has task_type {kind}; this model takes {wanted} adapters '
                     '(SEQ_2_SEQ_LM: T5, CAUSAL_LM: decoder-only models).')
  if not os.path.isfile(os.path.join(directory, WEIGHTS)):
    raise FileNotFoundError(f'{where} has no {WEIGHTS}; save it with PEFT\'s '
                            'save_pretrained(safe_serialization=True).')
  rows = safetensors_file.read(os.path.join(directory, WEIGHTS)).get(KEY)
  if rows is None:
    raise ValueError(f'{where}: {WEIGHTS} holds no {KEY} tensor.')
  length = config['num_virtual_tokens']
  blocks = config.get('num_transformer_submodules') or TASK_BLOCKS[kind]
  expected = (blocks * length, config.get('token_dim') or rows.shape[-1])
  if rows.shape != expected:
    raise ValueError(f'{where}: {KEY} is {rows.shape} but its config says {expected} '
                     f'({blocks} blocks of num_virtual_tokens={length}).')
  return np.asarray(rows[:length], np.float32)
