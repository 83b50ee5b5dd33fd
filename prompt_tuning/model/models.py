"""`EncoderDecoderModel`: loss, scoring and decoding over a `network.Transformer`.

Batches are dicts of `[B, L]` / `[B, T]` int arrays as produced by seqio's
`EncDecFeatureConverter`: `encoder_input_tokens`, `decoder_input_tokens`,
`decoder_target_tokens` and `decoder_loss_weights`. Nothing here knows about meshes,
files or which parameters are trained.

One frozen model serves many tasks at once: `logits`, `score_batch` and `predict_batch`
take a `prompts.PromptTable` `[N, P_max, E]` and read each example's row from
`batch['prompt_ids']` `[B]` (the model must be built with `prompt_length=0`). The rows
are gathered inside the computation, so one jit serves every mix of tasks.
"""

import functools
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning.model import decoder_network
from prompt_tuning.model import decoding
from prompt_tuning.model import initializers
from prompt_tuning.model import network
from prompt_tuning.model import prompts

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any


def cross_entropy(logits: Array, targets: Array, z_loss: float = 0.0,
                  label_smoothing: float = 0.0) -> tuple[Array, Array]:
  """Per-token loss and its z-loss part: logits [B, T, V], targets [B, T] -> ([B, T], [B, T]).

  With label smoothing the target distribution puts `1 - label_smoothing` on the target
  and spreads the rest evenly; its entropy is subtracted so a perfect model scores 0.
  `z_loss * log(Z)^2` keeps the softmax normaliser near 1 (as in t5x).
  """
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  on_value = 1.0 - label_smoothing
  off_value = label_smoothing / (vocab - 1)
  soft_targets = jax.nn.one_hot(targets, vocab) * (on_value - off_value) + off_value
  entropy = -(on_value * np.log(on_value) + (vocab - 1) * off_value * np.log(off_value + 1e-20)
              ) if label_smoothing else 0.0
  z_term = z_loss * jnp.square(log_z)
  return -jnp.sum(soft_targets * log_probs, axis=-1) - entropy + z_term, z_term


def pad_rows(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  """Token lists -> [N, length] int32, each cut to `length` and zero-padded on the right."""
  padded = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    row = list(row)[:length]
    padded[i, :len(row)] = row
  return padded


def decoder_features(targets: np.ndarray) -> dict[str, np.ndarray]:
  """The decoder features of zero-padded `targets` [N, T]: them shifted right by one (the
  inputs), and loss weights where a token is."""
  return {'decoder_target_tokens': targets,
          'decoder_input_tokens': np.pad(targets, [(0, 0), (1, 0)])[:, :-1],
          'decoder_loss_weights': (targets > 0).astype(np.int32)}


class PromptedModel:
  """What every model kind holds: its flax `module` (with the prompt, if any, at the
  subclass's `prompt_path`), the decoder, the loss settings and the EOS id."""

  prompt_path: str  # The `/`-joined path of the prompt parameter.

  def __init__(self, module: nn.Module, decode_fn=decoding.greedy, z_loss: float = 1e-4,
               label_smoothing: float = 0.0, eos_id: int = 1):
    self.module = module
    self.decode_fn = decode_fn
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.eos_id = eos_id

  def without_prompt(self):
    """The same model with no prompt of its own: the frozen model that serves a
    `prompts.PromptTable` (its parameters are this model's without the prompt)."""
    return type(self)(self.module.clone(prompt_length=0), self.decode_fn, self.z_loss,
                      self.label_smoothing, self.eos_id)


class EncoderDecoderModel(PromptedModel):
  """Loss, per-example scores and predictions for a T5 `Transformer`."""

  prompt_path = 'encoder/prompt/prompt'

  def initial_prompt(self, rng: Array, embedding: Array) -> Array:
    """The prompt initialiser's `[P, E]` prompt, given the frozen `token_embedder/embedding`
    [V, E] (as the network's own init does)."""
    shape = (self.module.prompt_length, embedding.shape[1])
    return self.module.prompt_initializer(rng, shape, embedding)

  @staticmethod
  def feature_converter(pack: bool = False) -> seqio.FeatureConverter:
    """The seqio converter whose batches this model reads."""
    return seqio.EncDecFeatureConverter(pack=pack)

  @staticmethod
  def batch_shapes(task_feature_lengths: Mapping[str, int],
                   batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a batch for `{'inputs': L, 'targets': T}`: [B, L] encoder and [B, T]
    decoder int32 features."""
    shape = lambda length: jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
    return {'encoder_input_tokens': shape(task_feature_lengths['inputs']),
            **{name: shape(task_feature_lengths['targets']) for name in (
                'decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')}}

  @staticmethod
  def make_rows(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                task_feature_lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The batch `feature_converter` makes of N examples (token lists `inputs`, `targets`,
    cut to the lengths): [N, L] and [N, T] int32 arrays. Rank classification passes each
    label word as the targets; a request to decode passes empty targets."""
    return {'encoder_input_tokens': pad_rows(inputs, task_feature_lengths['inputs']),
            **decoder_features(pad_rows(targets, task_feature_lengths['targets']))}

  def init(self, rng: Array, batch: Batch) -> Params:
    """Randomly initialised `params` (unboxed) for batches shaped like `batch`."""
    variables = jax.jit(self.module.init)(rng, batch['encoder_input_tokens'],
                                          batch['decoder_input_tokens'],
                                          batch['decoder_target_tokens'])
    return nn.meta.unbox(variables['params'])

  def logical_axes(self, batch: Batch) -> Params:
    """Every parameter's logical axis names, as `PartitionSpec`s; `batch` may hold
    `jax.ShapeDtypeStruct`s (nothing is allocated)."""
    boxed = jax.eval_shape(self.module.init, jax.random.PRNGKey(0),
                           batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                           batch['decoder_target_tokens'])
    return nn.get_partition_spec(boxed)['params']

  def logits(self, params: Params, batch: Batch, dropout_rng: Optional[Array] = None,
             prompt_table: Optional[prompts.PromptTable] = None) -> Array:
    """Teacher-forced logits [B, T, V]; dropout is on iff `dropout_rng` is given."""
    rngs = None if dropout_rng is None else {'dropout': dropout_rng}
    return self.module.apply({'params': params}, batch['encoder_input_tokens'],
                             batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                             enable_dropout=dropout_rng is not None, rngs=rngs,
                             **_table_prompts(batch, prompt_table))

  def loss_fn(self, params: Params, batch: Batch,
              dropout_rng: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
    """Mean loss over weighted target tokens, and metrics (loss, z_loss, accuracy, tokens)."""
    logits = self.logits(params, batch, dropout_rng)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', targets > 0).astype(jnp.float32)
    token_loss, z_term = cross_entropy(logits, targets, self.z_loss, self.label_smoothing)
    num_tokens = jnp.maximum(weights.sum(), 1.0)
    loss = jnp.sum(token_loss * weights) / num_tokens
    correct = (jnp.argmax(logits, axis=-1) == targets) * weights
    return loss, {'loss': loss, 'z_loss': jnp.sum(z_term * weights) / num_tokens,
                  'accuracy': correct.sum() / num_tokens, 'num_tokens': weights.sum()}

  def score_batch(self, params: Params, batch: Batch,
                  prompt_table: Optional[prompts.PromptTable] = None) -> Array:
    """Per-example sum of target-token log-probabilities [B] (for rank classification)."""
    logits = self.logits(params, batch, prompt_table=prompt_table)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', targets > 0)
    log_probs = jax.nn.log_softmax(logits)
    token_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(token_log_probs * weights, axis=-1)

  def predict_batch(self, params: Params, batch: Batch, rng: Optional[Array] = None,
                    max_decode_length: Optional[int] = None,
                    prompt_table: Optional[prompts.PromptTable] = None) -> tuple[Array, Array]:
    """Decodes with `decode_fn` over the KV cache: (tokens [B, T], scores [B]).

    T defaults to the batch's target length; tokens end with EOS then zeros.
    """
    tokens = batch['encoder_input_tokens']
    length = max_decode_length or batch['decoder_target_tokens'].shape[1]
    encoded, encoder_mask = self.module.apply({'params': params}, tokens, method='encode',
                                              **_table_prompts(batch, prompt_table))
    decode = functools.partial(self.module.apply, method='decode', decode=True,
                               max_decode_length=length, mutable=['cache'])
    start = jnp.zeros((tokens.shape[0], 1), jnp.int32)
    _, variables = decode({'params': params}, encoded, encoder_mask, start)

    def tokens_to_logits(step_tokens, cache):
      logits, variables = decode({'params': params, 'cache': cache}, None, None, step_tokens)
      return logits[:, -1], variables['cache']

    return self.decode_fn(tokens_to_logits, variables['cache'], batch_size=tokens.shape[0],
                          max_decode_length=length, rng=rng, eos_id=self.eos_id)


def _table_prompts(batch: Batch, prompt_table: Optional[prompts.PromptTable]) -> dict:
  """The network's prompt-table arguments: the table and `batch['prompt_ids']` [B], or none."""
  if (prompt_table is not None) != ('prompt_ids' in batch):
    raise ValueError("batch['prompt_ids'] and prompt_table go together: pass both (a frozen "
                     'model serving many prompts) or neither (its own prompt).')
  return {} if prompt_table is None else {'prompt_table': prompt_table,
                                          'prompt_ids': batch['prompt_ids']}


@gin.configurable
def build_model(config: network.T5Config | decoder_network.DecoderConfig = gin.REQUIRED,
                prompt_length: int = 0,
                prompt_initializer: initializers.PromptInitializer = initializers.uniform(),
                decode_fn=decoding.greedy, z_loss: float = 1e-4, label_smoothing: float = 0.0,
                eos_id: int = 1):
  """The model a gin run describes: `build_model.prompt_length = %PROMPT_LENGTH`, ...
  (0: no prompt, as in model tuning). A `network.T5Config` makes an `EncoderDecoderModel`,
  a `decoder_network.DecoderConfig` a `decoder_models.DecoderOnlyModel`. `eos_id` is the
  vocabulary's end token, where decoding stops (it overrides a gin `eos_id` of decode_fn)."""
  if not isinstance(prompt_length, int) or prompt_length < 0:
    raise ValueError(f'PROMPT_LENGTH={prompt_length!r} must be a whole number >= 1 for prompt '
                     'tuning (0 only for model tuning); the paper uses 100.')
  if isinstance(config, network.T5Config):
    module = network.Transformer(config, prompt_length, prompt_initializer)
    return EncoderDecoderModel(module, decode_fn, z_loss, label_smoothing, eos_id)
  # decoder_models imports this module, so it is imported when first needed.
  from prompt_tuning.model import decoder_models  # pylint: disable=g-import-not-at-top
  module = decoder_network.DecoderOnlyTransformer(config, prompt_length, prompt_initializer)
  return decoder_models.DecoderOnlyModel(module, decode_fn, z_loss, label_smoothing, eos_id)
