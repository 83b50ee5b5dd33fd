"""Times `trainer.train_step` (prompt tuning or full fine-tuning) on a random-weight T5 1.1.

Prints one JSON line, comparable with `benchmarks/peft_bench.py` run on the same shapes
(`benchmarks/compare_peft.py` alternates the two). Usage, from the repository root:

    python benchmarks/train_step.py --size small --batch 8 --inputs 128 --targets 8 \
        --prompt 20 --steps 10 --warmup 2 [--method full] [--dtype bfloat16] \
        [--frozen_dtype bfloat16] [--remat full] [--peak_flops 989e12]

Tokens: `tokens_per_s` counts real tokens, batch * (inputs + targets) per step, as
peft_bench.py does; `tokens_per_s_incl_prompt` adds the batch * prompt virtual tokens.
Model FLOPs: `t5_flops.forward_flops` on this model's dimensions; a prompt step is 2x forward
(forward + activation gradients, no weight gradients), a full step 3x forward. `--method full`
builds the model without a prompt (like peft_bench's `--method full`) and trains every
parameter with `runs/model_finetune.gin`'s Adafactor (LR 1e-3, parameter scaling). Peak memory: the device's peak bytes in use (GPU, TPU; init included) or the
process's peak RSS (CPU).
"""

import json
import platform
import resource
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from prompt_tuning import gin_config
from prompt_tuning.model import models
from prompt_tuning.training import partitioning
from prompt_tuning.training import trainer
import t5_flops  # benchmarks/t5_flops.py: this script's folder is on sys.path.

_SIZE = flags.DEFINE_string('size', 'small', 'T5 1.1 size: a gin/models/t5_1_1_<size>.gin.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Examples per step.')
_INPUTS = flags.DEFINE_integer('inputs', 128, 'Encoder input length (real tokens).')
_TARGETS = flags.DEFINE_integer('targets', 8, 'Decoder target length.')
_PROMPT = flags.DEFINE_integer('prompt', 20, 'Prompt length P (ignored by --method full).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps first (the first two compile).')
_METHOD = flags.DEFINE_enum('method', 'prompt', ['prompt', 'full'], 'What is trained.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Activation dtype (T5Config.dtype).')
_FROZEN_DTYPE = flags.DEFINE_enum('frozen_dtype', None, ['bfloat16'],
                                  'Cast frozen weights (trainer.cast_frozen); default: keep.')
_REMAT = flags.DEFINE_enum('remat', 'none', ['none', 'full', 'minimal'],
                           'network.T5Config.remat_policy (recompute layers in the backward).')
_DROPOUT = flags.DEFINE_float('dropout', 0.0, 'Dropout rate (peft_bench default: 0.1).')
_PEAK_FLOPS = flags.DEFINE_float('peak_flops', None, 'Device peak FLOP/s, for utilisation.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for weights, batch and dropout.')


def dims_of(cfg) -> t5_flops.Dims:
  """What `t5_flops.forward_flops` needs of a `network.T5Config`."""
  return t5_flops.Dims(cfg.emb_dim, cfg.mlp_dim, cfg.num_encoder_layers, cfg.num_decoder_layers,
                       cfg.num_heads, cfg.head_dim, cfg.vocab_size, len(cfg.mlp_activations) + 1)


def peak_memory_mb(device) -> tuple[float, str]:
  """(MiB, what it is): the accelerator's peak bytes in use since start-up (init included),
  else the process's peak RSS (CPU)."""
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device_peak_bytes_in_use'
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS.
  return rss / (2**20 if sys.platform == 'darwin' else 2**10), 'process_peak_rss'


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def main(argv):
  del argv
  full = _METHOD.value == 'full'
  prompt = 0 if full else _PROMPT.value
  b, l, t = _BATCH.value, _INPUTS.value, _TARGETS.value
  gin_config.parse([gin_config.model_gin_file(_SIZE.value)],
                   [f"network.T5Config.dtype = '{_DTYPE.value}'",
                    f'DROPOUT_RATE = {_DROPOUT.value}',
                    f"network.T5Config.remat_policy = '{_REMAT.value}'"])
  model = models.build_model(prompt_length=prompt)
  cfg = model.module.config

  rng = np.random.default_rng(_SEED.value)
  targets = rng.integers(2, cfg.vocab_size, (b, t), dtype=np.int32)
  host_batch = {
      'encoder_input_tokens': rng.integers(2, cfg.vocab_size, (b, l), dtype=np.int32),
      'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),  # Shifted right.
      'decoder_target_tokens': targets,
      'decoder_loss_weights': np.ones((b, t), np.int32),
  }
  mesh = partitioning.create_mesh()
  batch = jax.device_put(host_batch, partitioning.batch_sharding(mesh))

  patterns = ('.*',) if full else trainer.PROMPT_ONLY
  shardings = partitioning.logical_shardings(mesh, model.logical_axes(batch))
  trainable_shardings, frozen_shardings = trainer.split_params(shardings, patterns)

  def init(rng):  # One jit: XXL's frozen weights are cast as made, never all in float32.
    trainable, frozen = trainer.split_params(model.init(rng, batch), patterns)
    return trainable, trainer.cast_frozen(frozen, _FROZEN_DTYPE.value)
  trainable, frozen = jax.jit(init, out_shardings=(trainable_shardings, frozen_shardings))(
      jax.random.PRNGKey(_SEED.value))
  # The paper's Adafactor for a prompt; for every weight, that of runs/model_finetune.gin.
  optimizer = (trainer.adafactor(1e-3, multiply_by_parameter_scale=True) if full
               else trainer.adafactor())
  state = trainer.init_state(trainable, optimizer, _SEED.value, trainable_shardings, mesh)
  runner = trainer.Trainer(model, optimizer, trainer.state_shardings(state), frozen_shardings,
                           partitioning.batch_sharding(mesh))

  losses = []
  def step(state):
    state, metrics = runner.train_step(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    losses.append(float(metrics['loss']))
    return state

  start = time.perf_counter()
  state = step(state)
  compile_s = time.perf_counter() - start
  for _ in range(_WARMUP.value - 1):
    state = step(state)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state = step(state)
  elapsed = time.perf_counter() - start

  steps_per_s = _STEPS.value / elapsed
  flops = t5_flops.step_flops(dims_of(cfg), _METHOD.value, b, l, t, prompt)
  device = jax.devices()[0]
  mem_mb, mem_kind = peak_memory_mb(device)
  result = {
      'impl': 'prompt_tuning(jax)', 'method': _METHOD.value, 'size': _SIZE.value,
      'batch': b, 'inputs': l, 'targets': t, 'prompt': prompt,
      'device': device.platform, 'device_name': device.device_kind,
      'num_devices': jax.device_count(), 'dtype': _DTYPE.value,
      'frozen_dtype': _FROZEN_DTYPE.value, 'dropout': _DROPOUT.value,
      'optimizer': 'adafactor', 'grad_checkpointing': _REMAT.value != 'none',
      'remat': _REMAT.value,
      'steps': _STEPS.value, 'warmup': max(_WARMUP.value, 1),
      'compile_s': round(compile_s, 3), 'elapsed_s': round(elapsed, 4),
      'steps_per_s': round(steps_per_s, 4),
      'examples_per_s': round(steps_per_s * b, 2),
      'tokens_definition': 'batch*(inputs+targets) per step; prompt excluded (as peft_bench)',
      'tokens_per_s': round(steps_per_s * b * (l + t), 1),
      'tokens_per_s_incl_prompt': round(steps_per_s * b * (l + prompt + t), 1),
      'model_flops_per_step': flops,
      'model_flops_definition': ('matmul FLOPs, forward x3 (full) or x2 (prompt: forward + '
                                 'activation grads)'),
      'model_tflops_per_s': round(flops * steps_per_s / 1e12, 4),
      'utilisation': (round(flops * steps_per_s / _PEAK_FLOPS.value, 4)
                      if _PEAK_FLOPS.value else None),
      'peak_mem_mb': round(mem_mb, 1), 'peak_mem_kind': mem_kind,
      'trainable_params': count(state.trainable),
      'total_params': count(state.trainable) + count(frozen),
      'loss_first': round(losses[0], 4), 'loss_last': round(losses[-1], 4),
      'loss_finite': bool(np.all(np.isfinite(losses))),
      'jax': jax.__version__, 'python': platform.python_version(),
  }
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
