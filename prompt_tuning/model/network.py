"""T5 1.1 encoder-decoder with a soft prompt hook, in flax.linen.

Parameter paths follow t5x (`encoder/layers_0/attention/query/kernel`, ...). T5 1.0 and
mT5 are the same network with other knobs: `mlp_activations=('relu',)`,
`logits_via_embedding=True`, `vocab_size=250112`.

Shapes: B batch, L encoder length, T decoder length, P prompt length, E embed, V vocab.
"""

import dataclasses
from typing import Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.model import initializers
from prompt_tuning.model import layers
from prompt_tuning.model import prompts

Array = jax.Array


# What the backward pass may keep instead of recomputing ('none' = no remat).
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'minimal': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture of a T5 encoder-decoder; gin files in `gin/models/` set these."""
  vocab_size: int = 32128  # 32000 SentencePiece pieces + 100 extra ids, padded to 128.
  emb_dim: int = 512  # Width of the residual stream, E.
  num_heads: int = 6  # Attention heads, H.
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64  # Per-head width, D; H * D need not equal E.
  mlp_dim: int = 1024  # Feed-forward width, F.
  mlp_activations: tuple[str, ...] = ('gelu', 'linear')  # Gated GELU (1.1); ('relu',) = T5 1.0.
  dropout_rate: float = 0.0  # Used only when `enable_dropout=True`.
  logits_via_embedding: bool = False  # Tied output layer (T5 1.0), scaled by 1/sqrt(E).
  relpos_buckets: int = 32
  relpos_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: str = 'bfloat16'  # Activations; parity tests use 'float32'.
  param_dtype: str = 'float32'  # Parameters as created by `init`.
  remat_policy: str = 'none'  # Recompute layer activations in the backward pass: see REMAT.
  scan_layers: bool = False  # One `nn.scan` per stack: params `layers/...` get a leading
  # `layers` axis (faster compiles for deep models; use `stack_layers` to convert).

  def __post_init__(self):
    for name in ('vocab_size', 'emb_dim', 'num_heads', 'num_encoder_layers',
                 'num_decoder_layers', 'head_dim', 'mlp_dim'):
      if getattr(self, name) <= 0:
        raise ValueError(f'T5Config.{name} must be positive, got {getattr(self, name)}.')
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'T5Config.remat_policy={self.remat_policy!r}: use one of '
                       f'{sorted(REMAT_POLICIES)}.')
    unknown = set(self.mlp_activations) - set(layers.ACTIVATIONS)
    if unknown or len(self.mlp_activations) not in (1, 2):
      raise ValueError(f'T5Config.mlp_activations={self.mlp_activations}: use one or two of '
                       f'{sorted(layers.ACTIVATIONS)}, e.g. ("gelu", "linear").')


def _dtypes(config: T5Config) -> dict:
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


class EncoderLayer(nn.Module):
  """Pre-norm self-attention then MLP, each a residual branch."""
  config: T5Config
  deterministic: bool = True
  scanned: bool = False  # Under `nn.scan`: return (x, None).

  @nn.compact
  def __call__(self, x: Array, bias: Array):
    """x [B, L, E], bias [B, H, L, L] -> [B, L, E]."""
    cfg, deterministic = self.config, self.deterministic
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, **_dtypes(cfg), name=name)
    y = norm('pre_attention_layer_norm')(x)
    y = layers.Attention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, **_dtypes(cfg),
                         name='attention')(y, y, bias, deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = norm('pre_mlp_layer_norm')(x)
    y = layers.MLP(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, **_dtypes(cfg),
                   name='mlp')(y, deterministic)
    x = x + dropout(y, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention, then MLP."""
  config: T5Config
  deterministic: bool = True
  decode: bool = False
  cache_length: Optional[int] = None  # Decode cache slots (max_decode_length).
  scanned: bool = False  # Under `nn.scan`: return (x, None).

  @nn.compact
  def __call__(self, x: Array, encoded: Optional[Array], self_bias: Array, cross_bias: Array,
               decode_position: Optional[Array]):
    """x [B, T, E], encoded [B, L, E], self_bias [B, H, T, T], cross_bias [B, 1, T, L]."""
    cfg, deterministic, decode = self.config, self.deterministic, self.decode
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, **_dtypes(cfg), name=name)
    attention = lambda name: layers.Attention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate,
                                              **_dtypes(cfg), name=name)
    y = norm('pre_self_attention_layer_norm')(x)
    y = attention('self_attention')(y, y, self_bias, decode=decode,
                                    decode_position=decode_position,
                                    cache_length=self.cache_length,
                                    deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = norm('pre_cross_attention_layer_norm')(x)
    y = attention('encoder_decoder_attention')(y, encoded, cross_bias, is_cross=True,
                                               decode=decode, deterministic=deterministic)
    x = x + dropout(y, deterministic=deterministic)
    y = norm('pre_mlp_layer_norm')(x)
    y = layers.MLP(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, **_dtypes(cfg),
                   name='mlp')(y, deterministic)
    x = x + dropout(y, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    return (x, None) if self.scanned else x


def run_layers(layer_cls, config: T5Config, num_layers: int, x: Array, *args, **attributes):
  """Applies `num_layers` layers (`layers_0`, ...) or one scanned `layers` stack to x;
  `args` are the same for every layer. Wraps each layer in remat as configured."""
  policy = REMAT_POLICIES[config.remat_policy]
  if config.remat_policy != 'none':
    layer_cls = nn.remat(layer_cls, policy=policy)
  if not config.scan_layers:
    for i in range(num_layers):
      x = layer_cls(config, **attributes, name=f'layers_{i}')(x, *args)
    return x
  scanned = nn.scan(layer_cls, variable_axes={'params': 0, 'cache': 0},
                    split_rngs={'params': True, 'dropout': True},
                    in_axes=(nn.broadcast,) * len(args), length=num_layers,
                    metadata_params={nn.PARTITION_NAME: 'layers'})
  return scanned(config, **attributes, scanned=True, name='layers')(x, *args)[0]


def stack_layers(params, config: T5Config):
  """Unscanned params (`encoder/layers_0/...`) -> the `scan_layers` layout
  (`encoder/layers/...`, each leaf with a leading [num_layers] axis)."""
  stacked = dict(params)
  for stack, num_layers in (('encoder', config.num_encoder_layers),
                            ('decoder', config.num_decoder_layers)):
    tree = dict(params[stack])
    per_layer = [tree.pop(f'layers_{i}') for i in range(num_layers)]
    tree['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    stacked[stack] = tree
  return stacked


def unstack_layers(params, config: T5Config):
  """The inverse of `stack_layers`."""
  unstacked = dict(params)
  for stack, num_layers in (('encoder', config.num_encoder_layers),
                            ('decoder', config.num_decoder_layers)):
    tree = dict(params[stack])
    layers_tree = tree.pop('layers')
    for i in range(num_layers):
      tree[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], layers_tree)
    unstacked[stack] = tree
  return unstacked


class Encoder(nn.Module):
  """Embeds tokens, prepends the soft prompt (if any), runs the encoder stack.

  The prompt is the module's own `prompt` parameter (`prompt_length` > 0) or, for a
  model built without one, each example's row of a `prompts.PromptTable`.
  """
  config: T5Config
  embedder: layers.Embed
  prompt_length: int = 0
  prompt_initializer: initializers.PromptInitializer = initializers.uniform()

  @nn.compact
  def __call__(self, tokens: Array, deterministic: bool,
               prompt_table: Optional[prompts.PromptTable] = None,
               prompt_ids: Optional[Array] = None) -> tuple[Array, Array]:
    """tokens [B, L], prompt_ids [B] (rows of the table) -> (encoded [B, P + L, E],
    mask [B, P + L]); P is the prompt length, or the table's P_max."""
    cfg = self.config
    x = self.embedder(tokens)
    mask = (tokens > 0).astype(jnp.int32)
    if prompt_table is not None:
      if self.prompt_length:
        raise ValueError(f'this model has its own prompt (prompt_length={self.prompt_length}); '
                         'build it with prompt_length=0 to run a prompt_table.')
      x, mask = prompts.prefix(*prompt_table.select(prompt_ids), x, mask)
    elif self.prompt_length:
      prompt = prompts.Prompt(self.prompt_length, self.prompt_initializer, name='prompt')
      x, mask = prompts.prefix(*prompt(tokens.shape[0], self.embedder.embedding), x, mask)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = dropout(x, deterministic=deterministic)
    length = x.shape[1]
    bias = layers.RelativePositionBias(cfg.num_heads, cfg.relpos_buckets, cfg.relpos_max_distance,
                                       bidirectional=True, **_dtypes(cfg), name='relpos_bias')(
                                           np.arange(length), length)
    bias = layers.attention_bias(mask, mask) + bias
    x = run_layers(EncoderLayer, cfg, cfg.num_encoder_layers, x, bias,
                   deterministic=deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, **_dtypes(cfg), name='encoder_norm')(x)
    return dropout(x, deterministic=deterministic), mask


class Decoder(nn.Module):
  """Causal decoder stack with cross-attention and the output layer.

  Decoding (`decode=True`, mutable `cache`, the same `max_decode_length` each call): the
  first call, with any `[B, 1]` tokens, only creates the cache from `encoded` and
  `encoder_mask` with `max_decode_length` empty slots; each later call feeds the next
  token of each sequence, `[B, 1]`, and needs neither `encoded` nor `encoder_mask`.
  """
  config: T5Config
  embedder: layers.Embed

  @nn.compact
  def __call__(self, tokens: Array, encoded: Optional[Array], encoder_mask: Optional[Array],
               target_mask: Optional[Array], deterministic: bool, decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """tokens [B, T], encoded [B, L, E], encoder_mask [B, L], target_mask [B, T] -> logits [B, T, V]."""
    cfg = self.config
    relpos = layers.RelativePositionBias(cfg.num_heads, cfg.relpos_buckets, cfg.relpos_max_distance,
                                         bidirectional=False, **_dtypes(cfg), name='relpos_bias')
    decode_position = None
    if decode:
      creating = not self.has_variable('cache', 'position')
      position = self.variable('cache', 'position', lambda: jnp.zeros((), jnp.int32))
      encoder_mask = self.variable('cache', 'encoder_mask', lambda: encoder_mask).value
      decode_position = position.value
      query_positions = jnp.arange(tokens.shape[1]) + decode_position
      self_bias = relpos(query_positions, max_decode_length) + jnp.where(
          jnp.arange(max_decode_length)[None, :] <= query_positions[:, None], 0.0, layers.NEG_INF)
      if not creating:
        position.value += tokens.shape[1]
      target_mask = jnp.ones(tokens.shape, jnp.int32)
    else:
      length = tokens.shape[1]
      target_mask = jnp.ones(tokens.shape, jnp.int32) if target_mask is None else target_mask
      self_bias = relpos(np.arange(length), length) + layers.attention_bias(
          target_mask, target_mask, causal=True)
    cross_bias = layers.attention_bias(target_mask, encoder_mask)
    dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = dropout(self.embedder(tokens), deterministic=deterministic)
    x = run_layers(DecoderLayer, cfg, cfg.num_decoder_layers, x, encoded, self_bias, cross_bias,
                   decode_position, deterministic=deterministic, decode=decode,
                   cache_length=max_decode_length)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, **_dtypes(cfg), name='decoder_norm')(x)
    x = dropout(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.embedder.attend(x / np.sqrt(cfg.emb_dim))
    else:
      logits = layers.Dense(cfg.vocab_size, ('embed', 'vocab'), layers.default_kernel_init,
                            **_dtypes(cfg), name='logits_dense')(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))


class Transformer(nn.Module):
  """T5 encoder-decoder sharing one `token_embedder`; the prompt lives in the encoder."""
  config: T5Config
  prompt_length: int = 0
  prompt_initializer: initializers.PromptInitializer = initializers.uniform()

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, **_dtypes(cfg))
    self.encoder = Encoder(cfg, self.token_embedder, self.prompt_length, self.prompt_initializer)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_table: Optional[prompts.PromptTable] = None,
             prompt_ids: Optional[Array] = None):
    """[B, L] (and prompt_ids [B] into prompt_table) -> (encoded [B, P + L, E],
    encoder mask [B, P + L])."""
    return self.encoder(encoder_input_tokens, deterministic=not enable_dropout,
                        prompt_table=prompt_table, prompt_ids=prompt_ids)

  def decode(self, encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens=None,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: Optional[int] = None) -> Array:
    """Decoder logits [B, T, V]; padding is read from `decoder_target_tokens` [B, T]."""
    target_mask = None if decoder_target_tokens is None else (decoder_target_tokens > 0)
    return self.decoder(decoder_input_tokens, encoded, encoder_mask, target_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Optional[Array] = None, enable_dropout: bool = False,
               prompt_table: Optional[prompts.PromptTable] = None,
               prompt_ids: Optional[Array] = None) -> Array:
    """Teacher-forced logits [B, T, V] for encoder tokens [B, L] and decoder tokens [B, T];
    see `encode` for the prompt table."""
    encoded, encoder_mask = self.encode(encoder_input_tokens, enable_dropout, prompt_table,
                                        prompt_ids)
    return self.decode(encoded, encoder_mask, decoder_input_tokens, decoder_target_tokens,
                       enable_dropout)
