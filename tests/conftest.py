"""Shared test helpers: the Hugging Face reference model, small batches, 8 CPU devices."""

import contextlib
import importlib
import os

# Eight simulated CPU devices for sharding tests; set before JAX starts.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax.numpy as jnp
import numpy as np
import pytest



def _import_torch_side(*extra):
  """torch + transformers (+ `extra` modules of the hf extra, e.g. 'peft'); a skip locally,
  a failure in CI (CI=true) when missing."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    extra_modules = [importlib.import_module(name) for name in extra]
  except ImportError as e:
    if os.environ.get('CI') == 'true':
      pytest.fail(f'CI must run the Hugging Face parity tests; install the hf extra ({e}).')
    pytest.skip(f'Hugging Face parity needs the hf extra: {e}')
  return (torch, transformers, *extra_modules)


@contextlib.contextmanager
def registered_labels(task_names, words):
  """Inside the block, each task of `task_names` has the label words `words`; the label
  registry is as before afterwards."""
  from prompt_tuning.inference import labels  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(labels, '_LABELS', dict(labels._LABELS))  # pylint: disable=protected-access
    for task in task_names:
      labels.register_labels(task, words)
    yield


@pytest.fixture(scope='session')
def make_hf_t5():
  """Factory: a randomly initialised HF T5 (eval mode) and its weights in our layout."""
  torch, transformers = _import_torch_side()
  from prompt_tuning.formats import hf_convert  # pylint: disable=g-import-not-at-top

  def make(seed=0, lm_head_scale=None, eos_boost=0.0, **config):
    torch.manual_seed(seed)
    defaults = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                    dropout_rate=0.0, decoder_start_token_id=0)
    hf_config = transformers.T5Config(**{**defaults, **config})
    model = transformers.T5ForConditionalGeneration(hf_config).eval()
    if not hf_config.scale_decoder_outputs:  # Untie the output layer, as in T5 1.1.
      head = torch.randn_like(model.lm_head.weight) * (lm_head_scale or 1.0)
      head[1] += eos_boost * head[1].sign()  # Make EOS (id 1) come up in decoding tests.
      model.lm_head.weight = torch.nn.Parameter(head)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = hf_convert.config_from_hf(hf_config.to_dict(), dtype='float32')
    return model, cfg, hf_convert.from_hf(state, cfg)

  return make


@pytest.fixture(scope='session')
def peft():
  """The `peft` library (hf extra), with the same skip / CI failure as torch."""
  return _import_torch_side('peft')[2]


def make_batch(encoder_lengths, target_lengths, vocab_size=64, encoder_len=None,
               target_len=None, seed=0):
  """A seqio-style batch with random tokens (ids >= 2), padded with zeros."""
  rng = np.random.RandomState(seed)
  encoder_len = encoder_len or max(encoder_lengths)
  target_len = target_len or max(target_lengths)
  inputs = np.zeros((len(encoder_lengths), encoder_len), np.int32)
  targets = np.zeros((len(target_lengths), target_len), np.int32)
  for i, n in enumerate(encoder_lengths):
    inputs[i, :n] = rng.randint(2, vocab_size, n)
  for i, n in enumerate(target_lengths):
    targets[i, :n] = rng.randint(2, vocab_size, n)
  decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  return {'encoder_input_tokens': jnp.asarray(inputs),
          'decoder_input_tokens': jnp.asarray(decoder_inputs),
          'decoder_target_tokens': jnp.asarray(targets),
          'decoder_loss_weights': jnp.asarray(targets > 0, jnp.float32)}
