"""Times `trainer.train_step` (prompt tuning or full fine-tuning) on a random-weight T5 1.1.

Prints one JSON line, comparable with `benchmarks/peft_bench.py` run on the same shapes
(see `benchmarks/compare_peft.sh`). Usage, from the repository root:

    python benchmarks/train_step.py --size small --batch 8 --inputs 128 --targets 8 \
        --prompt 20 --steps 10 --warmup 2 [--method full] [--dtype bfloat16] \
        [--frozen_dtype bfloat16] [--peak_flops 989e12]

Tokens: `tokens_per_s` counts real tokens, batch * (inputs + targets) per step, as
peft_bench.py does; `tokens_per_s_incl_prompt` adds the batch * prompt virtual tokens.
Model FLOPs: see `forward_flops`; a prompt step is 2x forward (forward + activation
gradients, no weight gradients), a full step 3x forward. `--method full` builds the model
without a prompt (like peft_bench's `--method full`) and trains every parameter.
"""

import json
import platform
import resource
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import gin_config
from prompt_tuning.model import models
from prompt_tuning.training import partitioning
from prompt_tuning.training import trainer

_SIZE = flags.DEFINE_string('size', 'small', 'T5 1.1 size: a gin/models/t5_1_1_<size>.gin.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Examples per step.')
_INPUTS = flags.DEFINE_integer('inputs', 128, 'Encoder input length (real tokens).')
_TARGETS = flags.DEFINE_integer('targets', 8, 'Decoder target length.')
_PROMPT = flags.DEFINE_integer('prompt', 20, 'Prompt length P (ignored by --method full).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps first (at least 1: the compile).')
_METHOD = flags.DEFINE_enum('method', 'prompt', ['prompt', 'full'], 'What is trained.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Activation dtype (T5Config.dtype).')
_FROZEN_DTYPE = flags.DEFINE_enum('frozen_dtype', None, ['bfloat16'],
                                  'Cast frozen weights (trainer.cast_frozen); default: keep.')
_DROPOUT = flags.DEFINE_float('dropout', 0.0, 'Dropout rate (peft_bench default: 0.1).')
_PEAK_FLOPS = flags.DEFINE_float('peak_flops', None, 'Device peak FLOP/s, for utilisation.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed for weights, batch and dropout.')


def forward_flops(cfg, batch: int, inputs: int, targets: int, prompt: int) -> int:
  """Matmul FLOPs of one forward pass: 2 per multiply-add.

  Per token, each weight matrix it passes through costs 2 * rows * cols; attention adds
  QK^T and AV, 2 * 2 * keys * H * D per query. The encoder sees S = prompt + inputs
  tokens; the decoder's cross-attention keys/values project the S encoder outputs once.
  Embedding lookups, norms, softmax and the loss are not counted.
  """
  e, f, hd, v = cfg.emb_dim, cfg.mlp_dim, cfg.num_heads * cfg.head_dim, cfg.vocab_size
  s, t = inputs + prompt, targets
  mlp = 2 * e * f * (len(cfg.mlp_activations) + 1)  # wi_0 (, wi_1) and wo.
  attn_proj = 2 * 4 * e * hd  # q, k, v, o.
  encoder = cfg.num_encoder_layers * s * (attn_proj + 4 * s * hd + mlp)
  decoder = cfg.num_decoder_layers * (
      t * (attn_proj + 4 * t * hd)  # Causal self-attention (full T x T counted).
      + t * 2 * 2 * e * hd + s * 2 * 2 * e * hd + t * 4 * s * hd  # Cross: q, o | k, v | scores.
      + t * mlp)
  logits = t * 2 * e * v
  return batch * (encoder + decoder + logits)


def peak_memory_mb(device) -> tuple[float, str]:
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
                    f'DROPOUT_RATE = {_DROPOUT.value}'])
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
  params = model.init(jax.random.PRNGKey(_SEED.value), batch)
  trainable, frozen = trainer.split_params(params, patterns)
  del params
  shardings = partitioning.logical_shardings(mesh, model.logical_axes(batch))
  trainable_shardings, frozen_shardings = trainer.split_params(shardings, patterns)
  frozen = jax.device_put(trainer.cast_frozen(frozen, _FROZEN_DTYPE.value), frozen_shardings)
  optimizer = trainer.adafactor()
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
  flops = forward_flops(cfg, b, l, t, prompt) * (3 if full else 2)
  device = jax.devices()[0]
  mem_mb, mem_kind = peak_memory_mb(device)
  result = {
      'impl': 'prompt_tuning(jax)', 'method': _METHOD.value, 'size': _SIZE.value,
      'batch': b, 'inputs': l, 'targets': t, 'prompt': prompt,
      'device': device.platform, 'device_name': device.device_kind,
      'num_devices': jax.device_count(), 'dtype': _DTYPE.value,
      'frozen_dtype': _FROZEN_DTYPE.value, 'dropout': _DROPOUT.value,
      'optimizer': 'adafactor', 'grad_checkpointing': False,
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
