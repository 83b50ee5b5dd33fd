r"""Writes what a run trained in the formats other tools read, and imports PEFT prompts.

    # The prompt of MODEL_DIR's newest checkpoint (or --step) as a PEFT adapter directory
    # (task_type SEQ_2_SEQ_LM for T5, CAUSAL_LM for decoder-only models); --format=npy
    # writes a [P, emb_dim] float32 .npy file instead. Either way its record (prompt_bank:
    # frozen weights, task, step...) goes beside it, for prompt banks:
    python -m prompt_tuning.export --model_dir=/tmp/run --format=peft \
      --output=/tmp/run/peft_adapter --base_model=google/t5-base-lm-adapt

    # Model weights as a Hugging Face directory: MODEL_DIR/params of a model-tuning run, or
    # --checkpoint=any INITIAL_CHECKPOINT_PATH (ours, T5X, HF); the gin file gives the model:
    python -m prompt_tuning.export --format=hf --gin_file=models/t5_1_1_small.gin \
      --model_dir=/tmp/model_run --output=/tmp/hf_model

    # A PEFT prompt-tuning adapter trained elsewhere -> .npy (for prompts/from_file.gin):
    python -m prompt_tuning.export --peft_adapter=/path/to/adapter --output=/tmp/prompt.npy
"""

import os

from absl import flags
import jax
import numpy as np

from prompt_tuning import gin_config
from prompt_tuning.formats import hf_checkpoint
from prompt_tuning.formats import hf_decoder
from prompt_tuning.formats import initial_checkpoint
from prompt_tuning.formats import prompt_formats
from prompt_tuning.inference import prompt_bank
from prompt_tuning.model import decoder_network
from prompt_tuning.model import models
from prompt_tuning.model import prompts
from prompt_tuning.training import checkpoints

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'The run (MODEL_DIR) to export from.')
_FORMAT = flags.DEFINE_enum('format', 'npy', ['npy', 'peft', 'hf'],
                            'npy or peft: the prompt; hf: the model weights.')
_OUTPUT = flags.DEFINE_string('output', None, 'The .npy file, or the peft / hf directory.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step of the prompt; default: newest.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'hf: the weights to convert; default MODEL_DIR/params.')
_BASE_MODEL = flags.DEFINE_string('base_model', None,
                                  'peft: the base_model_name_or_path to record.')
_PEFT_ADAPTER = flags.DEFINE_string('peft_adapter', None,
                                    'Import this PEFT prompt-tuning adapter as --output .npy.')


def export_hf(checkpoint: str, output: str) -> None:
  """The gin model's weights read from `checkpoint` (any kind) on one device, written in HF
  layout."""
  model = models.build_model()
  params = initial_checkpoint.load_params(checkpoint, frozen_on_one_device(model))
  config = model.module.config
  if isinstance(config, decoder_network.DecoderConfig):
    hf_decoder.save_hf_directory(params, config, output, model.eos_id)
  else:
    hf_checkpoint.save(output, params, config)


def frozen_on_one_device(model: models.EncoderDecoderModel):
  """The abstract frozen weights of `model` (its parameters without the prompt), as
  `jax.ShapeDtypeStruct`s on the first device: what `initial_checkpoint.load_params` fills."""
  shapes = model.batch_shapes({'inputs': 1, 'targets': 1}, 1)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(model.init, jax.random.PRNGKey(0), shapes))
  prompts.pop_at(abstract, model.prompt_path)
  return abstract


def model_tuning_params(model_dir: str) -> str:
  """MODEL_DIR/params, which model-tuning runs write; a prompt-tuning run is told apart."""
  params = os.path.join(model_dir, 'params')
  if not checkpoints.as_path(params).exists() and (
      checkpoints.as_path(model_dir) / 'checkpoints').exists():
    raise ValueError(f'MODEL_DIR {model_dir} is a prompt-tuning run: it trained a prompt, not '
                     'the model weights; export the prompt with --format=peft or --format=npy, '
                     'or pass the frozen weights with --checkpoint=... to convert them.')
  return params


def run_prompt_path(model_dir: str, step: int) -> str:
  """The parameter path of the prompt that checkpoint `step` of a run trained."""
  run_checkpoints = checkpoints.RunCheckpoints(model_dir)
  try:
    trained = run_checkpoints.read_meta(step)['trainable_shapes']
  finally:
    run_checkpoints.close()
  return next(path for path in trained if path in prompt_formats.TASK_TYPES)


def _model_dir() -> str:
  if not _MODEL_DIR.value:
    raise ValueError('pass --model_dir=MODEL_DIR (or --peft_adapter=... to import a prompt).')
  return _MODEL_DIR.value


def main(argv):
  del argv
  output = _OUTPUT.value
  if not output:
    raise ValueError('pass --output=...: the .npy file, or the directory for peft and hf.')
  if _PEFT_ADAPTER.value:
    np.save(output, prompt_formats.load_peft(_PEFT_ADAPTER.value))
  elif _FORMAT.value == 'hf':
    if not flags.FLAGS.gin_file:
      raise ValueError('--format=hf needs the model: --gin_file=models/t5_1_1_<size>.gin.')
    gin_config.parse_flags()
    export_hf(_CHECKPOINT.value or model_tuning_params(_model_dir()), output)
  else:
    step = prompt_bank.run_step(_model_dir(), _STEP.value)
    prompt = np.asarray(prompt_bank.run_prompt(_model_dir(), step), np.float32)
    if _FORMAT.value == 'peft':
      prompt_formats.save_peft(output, prompt, _BASE_MODEL.value,
                               prompt_formats.TASK_TYPES[run_prompt_path(_model_dir(), step)])
      record = os.path.join(output, prompt_bank.RECORD)
    else:
      np.save(output, prompt)
      record = os.path.splitext(output)[0] + '.json'
    prompt_bank.write_record(record, prompt_bank.run_record(_model_dir(), step))
    print(f'wrote {record}')
  print(f'wrote {output}')


if __name__ == '__main__':
  gin_config.run(main)
