"""Decoder-only transformers (Llama, Gemma 1, Qwen2, GPT-2) with a soft prompt, in flax.linen.

Parameter paths: `token_embedder/embedding` [V, E]; `decoder/layers_{i}/`
{`pre_self_attention_layer_norm`, `self_attention/{query,key,value,out}`,
`pre_mlp_layer_norm`, `mlp/{wi_0,wi_1 | wi,wo}`}; `decoder/decoder_norm`;
`decoder/logits_dense/kernel` [E, V] (untied only); `decoder/position_embedder/embedding`
[max_positions, E] (learned positions only); the prompt `decoder/prompt/prompt` [P, E].

The prompt goes before the tokens: the sequence is [prompt; tokens] with mask
[prompt mask; token mask]. Every position attends causally to the real positions before it;
padding (left padding of a `PromptTable` row, of a decoding prefix, right padding of a
batch) is never attended. Each position's index is the count of real positions before it
(the cumulative sum of the mask), so padding shifts nothing: a mixed batch equals each
prompt alone, and a prompt of P rows puts the first token at position P (for GPT-2's learned
positions: prompt rows take 0..P-1, tokens P..).

A prompt row stands where an embedded token stands, after Gemma's sqrt(E) scaling: it is
not scaled again. This equals Hugging Face (transformers >= 5, whose Gemma embedding module
applies the scale) fed `inputs_embeds = [prompt; model.get_input_embeddings()(ids)]`; in
transformers 4.x, which scaled `inputs_embeds` inside the model, feed `prompt / sqrt(E)`.
Vocabulary-based prompt initialisers therefore receive the scaled embedding table.

Shapes: B batch, T tokens, P prompt length, S cache slots, E embed, V vocab.
"""

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prompt_tuning.model import decoder_layers
from prompt_tuning.model import initializers
from prompt_tuning.model import layers
from prompt_tuning.model import network
from prompt_tuning.model import prompts

Array = jax.Array


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture of a decoder-only model; gin files in `gin/models/` set these."""
  vocab_size: int = 32000
  emb_dim: int = 2048  # Width of the residual stream, E.
  num_heads: int = 32  # Query heads, H.
  num_kv_heads: int = 8  # Key/value heads, K (grouped-query attention; K = H: multi-head).
  head_dim: int = 64  # Per-head width, D.
  mlp_dim: int = 8192  # Feed-forward width, F.
  num_layers: int = 16
  norm: str = 'rms'  # 'rms' (Llama, Gemma, Qwen2) or 'layer' (GPT-2).
  norm_epsilon: float = 1e-5
  norm_plus_one: bool = False  # Gemma: RMSNorm multiplies by (1 + scale), scale stored as HF's.
  positions: str = 'rotary'  # 'rotary' or 'learned' (GPT-2).
  rope_theta: float = 10000.0
  rope_scaling_factor: float = 1.0  # Llama 3's `rope_type: llama3` (1 = no scaling).
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  max_positions: int = 1024  # Rows of the learned position table (rotary: the trained context).
  mlp_activations: tuple[str, ...] = ('silu', 'linear')  # Gated pair, or one (GPT-2 'gelu_new').
  qkv_bias: bool = False  # Qwen2, GPT-2.
  out_bias: bool = False  # GPT-2 (attention output).
  mlp_bias: bool = False  # GPT-2.
  tie_embeddings: bool = False  # Logits from the embedding table (no logits_dense).
  scale_embeddings: bool = False  # Gemma: embeddings times sqrt(E) in the activation dtype.
  dropout_rate: float = 0.0  # Embeddings and residual branches; only with enable_dropout.
  dtype: str = 'bfloat16'  # Activations; parity tests use 'float32'.
  param_dtype: str = 'float32'
  remat_policy: str = 'none'  # See network.REMAT_POLICIES.
  scan_layers: bool = False  # One nn.scan over `decoder/layers/...` (leading layers axis).
  loss_chunk: int = 128  # The loss holds the logits [B, loss_chunk, V] of this many positions.

  def __post_init__(self):
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'num_kv_heads', 'head_dim', 'mlp_dim',
                 'num_layers', 'max_positions', 'loss_chunk'):
      if getattr(self, name) <= 0:
        raise ValueError(f'DecoderConfig.{name} must be positive, got {getattr(self, name)}.')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'DecoderConfig.num_heads={self.num_heads} must be a multiple of '
                       f'num_kv_heads={self.num_kv_heads}.')
    choices = {'norm': ('rms', 'layer'), 'positions': ('rotary', 'learned'),
               'remat_policy': tuple(network.REMAT_POLICIES)}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f'DecoderConfig.{name}={getattr(self, name)!r}: use one of {allowed}.')
    if self.norm_plus_one and self.norm != 'rms':
      raise ValueError("DecoderConfig.norm_plus_one is Gemma's RMSNorm; set norm='rms'.")
    if self.positions == 'rotary' and self.head_dim % 2:
      raise ValueError(f'DecoderConfig.head_dim={self.head_dim} must be even for rotary '
                       'positions.')
    unknown = set(self.mlp_activations) - set(decoder_layers.ACTIVATIONS)
    if unknown or len(self.mlp_activations) not in (1, 2):
      raise ValueError(f'DecoderConfig.mlp_activations={self.mlp_activations}: use one or two '
                       f'of {sorted(decoder_layers.ACTIVATIONS)}, e.g. ("silu", "linear").')
    if self.rope_scaling_factor != 1.0 and not (
        self.rope_scaling_factor > 1 and self.rope_high_freq_factor > self.rope_low_freq_factor):
      raise ValueError('DecoderConfig rope scaling needs rope_scaling_factor > 1 and '
                       'rope_high_freq_factor > rope_low_freq_factor (Llama 3: 32, 1, 4).')

  @property
  def llama3_scaling(self) -> Optional[tuple]:
    """(factor, low, high, original max positions), or None without rope scaling."""
    if self.rope_scaling_factor == 1.0:
      return None
    return (self.rope_scaling_factor, self.rope_low_freq_factor, self.rope_high_freq_factor,
            self.rope_original_max_positions)


def embed_scale(config: DecoderConfig) -> float:
  """What embedded tokens are multiplied by: sqrt(E) for Gemma, else 1."""
  return math.sqrt(config.emb_dim) if config.scale_embeddings else 1.0


def _dtypes(config: DecoderConfig) -> dict:
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def make_norm(config: DecoderConfig, name: str) -> nn.Module:
  """The configured norm: T5's RMSNorm (Llama, Qwen2), Gemma's, or GPT-2's LayerNorm."""
  if config.norm == 'layer':
    return decoder_layers.LayerNorm(config.norm_epsilon, **_dtypes(config), name=name)
  if config.norm_plus_one:
    return decoder_layers.PlusOneRMSNorm(config.norm_epsilon, **_dtypes(config), name=name)
  return layers.RMSNorm(config.norm_epsilon, **_dtypes(config), name=name)


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention then MLP, each a residual branch."""
  config: DecoderConfig
  deterministic: bool = True
  cache_length: Optional[int] = None  # Decode cache slots.
  scanned: bool = False  # Under `nn.scan`: return (x, None).

  @nn.compact
  def __call__(self, x: Array, bias: Array, rope: Optional[tuple[Array, Array]],
               cache_index: Optional[Array]):
    """x [B, Q, E], bias [B, 1, Q, S], rope (cos, sin) [B, Q, D] or None -> [B, Q, E]."""
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = make_norm(cfg, 'pre_self_attention_layer_norm')(x)
    y = decoder_layers.Attention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.qkv_bias,
                                 cfg.out_bias, **_dtypes(cfg), name='self_attention')(
                                     y, bias, rope, cache_index, self.cache_length)
    x = x + dropout(y, deterministic=self.deterministic)
    y = make_norm(cfg, 'pre_mlp_layer_norm')(x)
    y = decoder_layers.MLP(cfg.mlp_dim, cfg.mlp_activations, cfg.mlp_bias, **_dtypes(cfg),
                           name='mlp')(y)
    x = x + dropout(y, deterministic=self.deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return (x, None) if self.scanned else x


def stack_layers(params, config: DecoderConfig):
  """Unscanned params (`decoder/layers_0/...`) -> the `scan_layers` layout."""
  decoder = dict(params['decoder'])
  per_layer = [decoder.pop(f'layers_{i}') for i in range(config.num_layers)]
  decoder['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
  return {**params, 'decoder': decoder}


def unstack_layers(params, config: DecoderConfig):
  """The inverse of `stack_layers`."""
  decoder = dict(params['decoder'])
  stacked = decoder.pop('layers')
  for i in range(config.num_layers):
    decoder[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return {**params, 'decoder': decoder}


class Decoder(nn.Module):
  """Embeds tokens, prepends the prompt, runs the stack and the output layer.

  The prompt is the module's own `prompt` parameter (`prompt_length` > 0) or each example's
  row of a `prompts.PromptTable`. Decoding (`decode=True`, mutable `cache`): the first call
  (prefill) prepends the prompt, creates a cache of `cache_length` slots, writes the whole
  sequence into it and returns None; each later call feeds one token per example `[B, 1]`,
  continuing each example's own positions, and returns its logits.
  """
  config: DecoderConfig
  embedder: layers.Embed
  prompt_length: int = 0
  prompt_initializer: initializers.PromptInitializer = initializers.uniform()

  def _prompt(self, batch: int, prompt_table, prompt_ids) -> Optional[tuple[Array, Array]]:
    """(prompt [B, P, E], mask [B, P]) or None."""
    if prompt_table is not None:
      if self.prompt_length:
        raise ValueError(f'this model has its own prompt (prompt_length={self.prompt_length}); '
                         'build it with prompt_length=0 to run a prompt_table.')
      return prompt_table.select(prompt_ids)
    if not self.prompt_length:
      return None
    scale = embed_scale(self.config)
    init = lambda rng, shape, table: self.prompt_initializer(rng, shape, table * scale)
    return prompts.Prompt(self.prompt_length, init, name='prompt')(batch, self.embedder.embedding)

  def _positions_and_bias(self, mask: Array, cache_length: Optional[int], decode: bool):
    """mask [B, Q] -> (positions [B, Q], bias [B, 1, Q, S], cache slot of the first query or
    None); in decoding, updates the cache's slot index, next positions and key mask."""
    if not decode:
      positions = jnp.cumsum(mask, axis=1) - 1
      return jnp.maximum(positions, 0), layers.attention_bias(mask, mask, causal=True), None
    batch, length = mask.shape
    index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
    next_position = self.variable('cache', 'next_position', jnp.zeros, (batch,), jnp.int32)
    key_mask = self.variable('cache', 'key_mask', jnp.zeros, (batch, cache_length), jnp.int32)
    start = index.value
    positions = next_position.value[:, None] + jnp.cumsum(mask, axis=1) - 1
    key_mask.value = jax.lax.dynamic_update_slice(key_mask.value, mask.astype(jnp.int32),
                                                  (0, start))
    causal = jnp.arange(cache_length)[None, :] <= start + jnp.arange(length)[:, None]
    allowed = (key_mask.value[:, None, :] > 0) & causal[None]
    bias = jnp.where(allowed, 0.0, layers.NEG_INF)[:, None].astype(jnp.float32)
    index.value = start + length
    next_position.value = next_position.value + mask.sum(axis=1).astype(jnp.int32)
    return jnp.maximum(positions, 0), bias, start

  @nn.compact
  def __call__(self, tokens: Array, token_mask: Array, deterministic: bool,
               prompt_table: Optional[prompts.PromptTable] = None,
               prompt_ids: Optional[Array] = None, decode: bool = False,
               cache_length: Optional[int] = None, hidden: bool = False) -> Optional[Array]:
    """tokens [B, T], token_mask [B, T] (1 = real) -> logits [B, T, V] of the tokens (the
    prompt's positions are dropped), or with `hidden` what the output layer reads (after
    `decoder_norm`, see `output_logits`) [B, T, E]; None for a prefill."""
    cfg = self.config
    stepping = decode and self.has_variable('cache', 'index')
    x = self.embedder(tokens)
    if cfg.scale_embeddings:
      x = x * jnp.asarray(embed_scale(self.config), x.dtype)
    mask, num_prompt = token_mask.astype(jnp.int32), 0
    prompt = None if stepping else self._prompt(tokens.shape[0], prompt_table, prompt_ids)
    if prompt is not None:
      x, mask = prompts.prefix(*prompt, x, mask)
      num_prompt = prompt[0].shape[1]
    positions, bias, cache_index = self._positions_and_bias(mask, cache_length, decode)
    rope = None
    if cfg.positions == 'learned':
      position_embedder = layers.Embed(cfg.max_positions, cfg.emb_dim, **_dtypes(cfg),
                                       name='position_embedder')
      x = x + position_embedder(jnp.minimum(positions, cfg.max_positions - 1))
    else:
      inv_freq = decoder_layers.rotary_frequencies(cfg.head_dim, cfg.rope_theta,
                                                   cfg.llama3_scaling)
      rope = decoder_layers.rotary_tables(positions, inv_freq, x.dtype)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = dropout(x, deterministic=deterministic)
    x = network.run_layers(DecoderLayer, cfg, cfg.num_layers, x, bias, rope, cache_index,
                           deterministic=deterministic, cache_length=cache_length)
    if decode and not stepping:
      return None
    x = make_norm(cfg, 'decoder_norm')(x[:, num_prompt:])
    x = dropout(x, deterministic=deterministic)
    if hidden:
      return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    if cfg.tie_embeddings:
      logits = self.embedder.attend(x)
    else:
      logits = decoder_layers.Linear(cfg.vocab_size, ('embed', 'vocab'), **_dtypes(cfg),
                                     name='logits_dense')(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))


def output_logits(params, config: DecoderConfig, x: Array) -> Array:
  """The output layer as the network applies it, from the model's `params`: x [B, L, E] (the
  network's output with `hidden=True`) -> float32 logits [B, L, V]."""
  matrix = (params['token_embedder']['embedding'].T if config.tie_embeddings
            else params['decoder']['logits_dense']['kernel'])
  dtype = jnp.dtype(config.dtype)
  logits = jnp.dot(x.astype(dtype), matrix.astype(dtype)).astype(jnp.float32)
  return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class DecoderOnlyTransformer(nn.Module):
  """A decoder-only language model with a soft prompt before its inputs (see the module
  docstring for masks, positions and the prompt's scale)."""
  config: DecoderConfig
  prompt_length: int = 0
  prompt_initializer: initializers.PromptInitializer = initializers.uniform()

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, **_dtypes(cfg))
    self.decoder = Decoder(cfg, self.token_embedder, self.prompt_length, self.prompt_initializer)

  def __call__(self, tokens: Array, token_mask: Optional[Array] = None,
               enable_dropout: bool = False,
               prompt_table: Optional[prompts.PromptTable] = None,
               prompt_ids: Optional[Array] = None, hidden: bool = False) -> Array:
    """tokens [B, T] (mask [B, T], default all real; prompt_ids [B] into prompt_table) ->
    logits [B, T, V]: position t predicts token t + 1 (with `hidden`: the output layer's
    inputs [B, T, E])."""
    mask = jnp.ones(tokens.shape, jnp.int32) if token_mask is None else token_mask
    return self.decoder(tokens, mask, not enable_dropout, prompt_table, prompt_ids,
                        hidden=hidden)

  def prefill(self, tokens: Array, token_mask: Array, cache_length: int,
              prompt_table: Optional[prompts.PromptTable] = None,
              prompt_ids: Optional[Array] = None) -> None:
    """Creates the `cache` (mutable) with `cache_length` slots and writes [prompt; tokens]
    into it: tokens [B, T], left-padded, token_mask [B, T]; needs P + T <= cache_length."""
    self.decoder(tokens, token_mask, True, prompt_table, prompt_ids, decode=True,
                 cache_length=cache_length)

  def step(self, tokens: Array, cache_length: int) -> Array:
    """The next token of each example [B, 1] -> its logits [B, 1, V] (cache mutable)."""
    return self.decoder(tokens, jnp.ones(tokens.shape, jnp.int32), True, decode=True,
                        cache_length=cache_length)
