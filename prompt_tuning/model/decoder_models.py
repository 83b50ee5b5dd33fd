"""`DecoderOnlyModel`: loss, scoring and decoding over a `DecoderOnlyTransformer`, with the
public interface of `models.EncoderDecoderModel`.

Batches are seqio's `PrefixLMFeatureConverter(pack=False, loss_on_targets_only=True)` output,
`[B, T]` int arrays with T = inputs + targets feature lengths:

- `decoder_target_tokens`: the inputs, then the targets, then zeros;
- `decoder_loss_weights`: 1 on the targets;
- `decoder_causal_attention`: 1 over the inputs and one more position.

The network reads `decoder_target_tokens` itself as the sequence (position t predicts token
t + 1); `decoder_input_tokens` is not read, since the 0 that seqio puts first is a real token
of these vocabularies (e.g. '!' for GPT-2 and Llama 3). So the first token of each row (give
the inputs a BOS) is never predicted, and only targets carry loss: the inputs, padding and
the prompt have weight 0. Padding is the run of zeros at the end of a row; a 0 before the
last non-zero token is a real token.
"""

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning.model import decoder_network
from prompt_tuning.model import models
from prompt_tuning.model import prompts

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any
# The same prompt-table arguments (and refusal) as the encoder-decoder model's.
_table_prompts = models._table_prompts  # pylint: disable=protected-access


def token_mask(tokens: Array) -> Array:
  """[B, T] -> [B, T] int32: 1 up to each row's last non-zero token, 0 on the trailing zeros."""
  seen_from_right = jnp.cumsum((tokens != 0)[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1]
  return (seen_from_right > 0).astype(jnp.int32)


def input_lengths(batch: Batch) -> Array:
  """Each row's inputs length [B]: from `decoder_causal_attention` (its sum minus one), else
  the position of the first loss weight."""
  if 'decoder_causal_attention' in batch:
    return jnp.sum(batch['decoder_causal_attention'], axis=1).astype(jnp.int32) - 1
  return jnp.argmax(batch['decoder_loss_weights'] > 0, axis=1).astype(jnp.int32)


def left_aligned_prefix(tokens: Array, lengths: Array) -> tuple[Array, Array]:
  """Moves each row's first `lengths[b]` tokens to the end: tokens [B, T] -> (prefix [B, T]
  left-padded with zeros, mask [B, T])."""
  width = tokens.shape[1]
  shift = width - lengths[:, None]
  columns = jnp.arange(width)[None, :]
  mask = columns >= shift
  prefix = jnp.take_along_axis(tokens, jnp.clip(columns - shift, 0, width - 1), axis=1)
  return jnp.where(mask, prefix, 0), mask.astype(jnp.int32)


class DecoderOnlyModel(models.PromptedModel):
  """Loss, per-example scores and predictions for a `DecoderOnlyTransformer`."""

  prompt_path = 'decoder/prompt/prompt'

  def initial_prompt(self, rng: Array, embedding: Array) -> Array:
    """The prompt initialiser's `[P, E]` prompt, given the frozen `token_embedder/embedding`
    [V, E]: a vocabulary-based initialiser sees the rows as the network embeds them (times
    sqrt(E) for Gemma), as in the network's own init."""
    shape = (self.module.prompt_length, embedding.shape[1])
    scale = decoder_network.embed_scale(self.module.config)
    return self.module.prompt_initializer(rng, shape, embedding * scale)

  @staticmethod
  def feature_converter(pack: bool = False) -> seqio.FeatureConverter:
    """The seqio converter whose batches this model reads."""
    return seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)

  @staticmethod
  def batch_shapes(task_feature_lengths: Mapping[str, int],
                   batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a batch for `{'inputs': L, 'targets': M}`: four [B, L + M] int32 features."""
    length = task_feature_lengths['inputs'] + task_feature_lengths['targets']
    shape = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
    return {name: shape for name in ('decoder_target_tokens', 'decoder_input_tokens',
                                     'decoder_loss_weights', 'decoder_causal_attention')}

  @staticmethod
  def make_rows(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                task_feature_lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The batch `feature_converter` makes of N examples (token lists `inputs`, `targets`,
    cut to the lengths): four [N, L + T] int32 arrays, each row its inputs then its targets.
    Rank classification passes each label word as the targets; a request to decode passes
    empty targets (each row then needs at least one input token)."""
    inputs = [list(row)[:task_feature_lengths['inputs']] for row in inputs]
    targets = [list(row)[:task_feature_lengths['targets']] for row in targets]
    width = task_feature_lengths['inputs'] + task_feature_lengths['targets']
    tokens = models.pad_rows([i + t for i, t in zip(inputs, targets)], width)
    prefix = models.pad_rows([[1] * (len(i) + 1) for i in inputs], width)
    weights = models.pad_rows([[0] * len(i) + [1] * len(t) for i, t in zip(inputs, targets)],
                              width)
    return {'decoder_target_tokens': tokens,
            'decoder_input_tokens': np.pad(tokens, [(0, 0), (1, 0)])[:, :-1],
            'decoder_loss_weights': weights, 'decoder_causal_attention': prefix}

  def init(self, rng: Array, batch: Batch) -> Params:
    """Randomly initialised `params` (unboxed) for batches shaped like `batch`."""
    variables = jax.jit(self.module.init)(rng, batch['decoder_target_tokens'])
    return nn.meta.unbox(variables['params'])

  def logical_axes(self, batch: Batch) -> Params:
    """Every parameter's logical axis names, as `PartitionSpec`s; `batch` may hold
    `jax.ShapeDtypeStruct`s (nothing is allocated)."""
    boxed = jax.eval_shape(self.module.init, jax.random.PRNGKey(0),
                           batch['decoder_target_tokens'])
    return nn.get_partition_spec(boxed)['params']

  def logits(self, params: Params, batch: Batch, dropout_rng: Optional[Array] = None,
             prompt_table: Optional[prompts.PromptTable] = None) -> Array:
    """Teacher-forced logits [B, T, V] over `decoder_target_tokens`: position t predicts
    token t + 1. Dropout is on iff `dropout_rng` is given."""
    tokens = batch['decoder_target_tokens']
    rngs = None if dropout_rng is None else {'dropout': dropout_rng}
    return self.module.apply({'params': params}, tokens, token_mask(tokens),
                             enable_dropout=dropout_rng is not None, rngs=rngs,
                             **_table_prompts(batch, prompt_table))

  def _next_token_terms(self, logits: Array, batch: Batch) -> tuple[Array, Array, Array]:
    """(logits [B, T-1, V] of positions that predict a next token, those tokens [B, T-1],
    their loss weights [B, T-1])."""
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', targets > 0)
    return logits[:, :-1], targets[:, 1:], weights[:, 1:].astype(jnp.float32)

  def loss_fn(self, params: Params, batch: Batch,
              dropout_rng: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
    """Mean loss over weighted target tokens, and metrics (loss, z_loss, accuracy, tokens)."""
    logits, targets, weights = self._next_token_terms(self.logits(params, batch, dropout_rng),
                                                      batch)
    token_loss, z_term = models.cross_entropy(logits, targets, self.z_loss,
                                              self.label_smoothing)
    num_tokens = jnp.maximum(weights.sum(), 1.0)
    loss = jnp.sum(token_loss * weights) / num_tokens
    correct = (jnp.argmax(logits, axis=-1) == targets) * weights
    return loss, {'loss': loss, 'z_loss': jnp.sum(z_term * weights) / num_tokens,
                  'accuracy': correct.sum() / num_tokens, 'num_tokens': weights.sum()}

  def score_batch(self, params: Params, batch: Batch,
                  prompt_table: Optional[prompts.PromptTable] = None) -> Array:
    """Per-example sum of target-token log-probabilities [B] (for rank classification)."""
    logits, targets, weights = self._next_token_terms(
        self.logits(params, batch, prompt_table=prompt_table), batch)
    log_probs = jax.nn.log_softmax(logits)
    token_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(token_log_probs * weights, axis=-1)

  def predict_batch(self, params: Params, batch: Batch, rng: Optional[Array] = None,
                    max_decode_length: Optional[int] = None,
                    prompt_table: Optional[prompts.PromptTable] = None) -> tuple[Array, Array]:
    """Continues each row's inputs with `decode_fn` over the KV cache: (tokens [B, N],
    scores [B]); N defaults to the batch's length T. Tokens end with EOS (`eos_id`) then zeros.

    The inputs (see `input_lengths`; each needs at least one token) are left-padded so that
    generation starts right after each example's own last input; the prefill writes
    [prompt; inputs without their last token] into the cache, and the decoder's first step
    feeds that last token in place of `decode_fn`'s start token.
    """
    tokens = batch['decoder_target_tokens']
    batch_size, width = tokens.shape
    length = max_decode_length or width
    prefix, mask = left_aligned_prefix(tokens, input_lengths(batch))
    prompt_rows = (self.module.prompt_length if prompt_table is None
                   else prompt_table.prompts.shape[1])
    cache_length = prompt_rows + width + length
    apply = lambda variables, *args, **kwargs: self.module.apply(variables, *args, **kwargs,
                                                                 mutable=['cache'])
    _, variables = apply({'params': params}, prefix[:, :-1], mask[:, :-1], cache_length,
                         method='prefill', **_table_prompts(batch, prompt_table))
    cache = {'network': variables['cache'], 'pending': prefix[:, -1:], 'first': jnp.array(True)}

    def tokens_to_logits(step_tokens, cache):
      step_tokens = jnp.where(cache['first'], cache['pending'], step_tokens)
      logits, variables = apply({'params': params, 'cache': cache['network']}, step_tokens,
                                cache_length, method='step')
      return logits[:, -1], {**cache, 'network': variables['cache'], 'first': jnp.array(False)}

    return self.decode_fn(tokens_to_logits, cache, batch_size=batch_size,
                          max_decode_length=length, rng=rng, eos_id=self.eos_id)
