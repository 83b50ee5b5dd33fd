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

from typing import Any, Callable, Mapping, Optional, Sequence

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


def next_token_sums(hidden: Array, output: Callable[[Array], Array], targets: Array,
                    weights: Array, chunk: int, z_loss: float = 0.0,
                    label_smoothing: float = 0.0) -> tuple[Array, Array, Array, Array]:
  """Per-example weighted sums [B] of the loss (`models.cross_entropy`), its z-loss part,
  correct argmax predictions and the targets' log-probabilities, over N positions.

  hidden [B, N, E]: what the output layer reads at each position; `output` maps [B, C, E]
  to logits [B, C, V]; targets [B, N] int (position n predicts targets[:, n]); weights
  [B, N]. The positions go through in chunks of at most `chunk`, each under
  `jax.checkpoint`, so the logits [B, chunk, V] of one chunk exist at a time, in the
  forward and the backward pass, never the [B, N, V] of all (8.6 GB in float32 for a 128k
  vocabulary at batch 32 and N = 527).
  """
  batch, length = targets.shape
  count = -(-length // chunk)
  size = -(-length // count)  # As even as possible: N = 527, chunk 128 -> 5 chunks of 106.

  def chunks(x: Array) -> Array:  # [B, N, ...] -> [count, B, size, ...], zero-padded.
    x = jnp.pad(x, [(0, 0), (0, count * size - length)] + [(0, 0)] * (x.ndim - 2))
    return jnp.swapaxes(x.reshape(batch, count, size, *x.shape[2:]), 0, 1)

  @jax.checkpoint
  def sums(inputs: tuple[Array, Array, Array]) -> Array:  # -> [4, B].
    chunk_hidden, chunk_targets, chunk_weights = inputs
    logits = output(chunk_hidden)
    token_loss, z_term = models.cross_entropy(logits, chunk_targets, z_loss, label_smoothing)
    log_probs = (jnp.take_along_axis(logits, chunk_targets[..., None], axis=-1)[..., 0] -
                 jax.nn.logsumexp(logits, axis=-1))
    correct = jnp.argmax(logits, axis=-1) == chunk_targets
    return jnp.stack([jnp.sum(value * chunk_weights, axis=1)
                      for value in (token_loss, z_term, correct, log_probs)])

  totals = jnp.sum(jax.lax.map(sums, (chunks(hidden), chunks(targets), chunks(weights))), 0)
  return tuple(totals)


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
             prompt_table: Optional[prompts.PromptTable] = None, hidden: bool = False) -> Array:
    """Teacher-forced logits [B, T, V] over `decoder_target_tokens`: position t predicts
    token t + 1 (with `hidden`, the output layer's inputs [B, T, E] instead). Dropout is on
    iff `dropout_rng` is given."""
    tokens = batch['decoder_target_tokens']
    rngs = None if dropout_rng is None else {'dropout': dropout_rng}
    return self.module.apply({'params': params}, tokens, token_mask(tokens),
                             enable_dropout=dropout_rng is not None, rngs=rngs, hidden=hidden,
                             **_table_prompts(batch, prompt_table))

  def _target_sums(self, params: Params, batch: Batch, dropout_rng: Optional[Array] = None,
                   prompt_table: Optional[prompts.PromptTable] = None) -> tuple[Array, ...]:
    """`next_token_sums` [B] each of the positions that predict a next token, and their
    loss weights [B, T-1]."""
    hidden = self.logits(params, batch, dropout_rng, prompt_table, hidden=True)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', targets > 0)[:, 1:].astype(jnp.float32)
    config = self.module.config
    output = lambda x: decoder_network.output_logits(params, config, x)
    return (*next_token_sums(hidden[:, :-1], output, targets[:, 1:], weights, config.loss_chunk,
                             self.z_loss, self.label_smoothing), weights)

  def loss_fn(self, params: Params, batch: Batch,
              dropout_rng: Optional[Array] = None) -> tuple[Array, dict[str, Array]]:
    """Mean loss over weighted target tokens, and metrics (loss, z_loss, accuracy, tokens)."""
    loss, z_loss, correct, _, weights = self._target_sums(params, batch, dropout_rng)
    num_tokens = jnp.maximum(weights.sum(), 1.0)
    loss = loss.sum() / num_tokens
    return loss, {'loss': loss, 'z_loss': z_loss.sum() / num_tokens,
                  'accuracy': correct.sum() / num_tokens, 'num_tokens': weights.sum()}

  def score_batch(self, params: Params, batch: Batch,
                  prompt_table: Optional[prompts.PromptTable] = None) -> Array:
    """Per-example sum of target-token log-probabilities [B] (for rank classification)."""
    return self._target_sums(params, batch, prompt_table=prompt_table)[3]

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
