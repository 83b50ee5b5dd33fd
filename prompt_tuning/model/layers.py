"""T5 1.1 building blocks in flax.linen, with t5x parameter names and logical axes.

Shapes use: B batch, L / Q / K lengths (query, key), E embed, H heads, D head_dim,
F mlp, V vocab. Every parameter is annotated with logical axis names (`embed`, `mlp`,
`heads`, `joined_kv`, `vocab`, `relpos_buckets`) so that partitioning rules map it onto
a mesh; activations carry `with_logical_constraint` hints (`batch`, `length`, ...).
"""

import functools
import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = jnp.dtype
Initializer = Callable[..., Array]

NEG_INF = -1e10  # Additive attention bias for masked positions.

ACTIVATIONS = {
    'gelu': functools.partial(nn.gelu, approximate=True),  # T5 1.1 / HF `gelu_new`.
    'relu': nn.relu,
    'linear': lambda x: x,
}

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def _param(module: nn.Module, name: str, init: Initializer, shape, axes, dtype):
  """Declares a parameter annotated with its logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias; statistics in float32."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., E] -> [..., E]."""
    scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',),
                   self.param_dtype)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return x.astype(self.dtype) * scale.astype(self.dtype)


class Dense(nn.Module):
  """Bias-free projection of the last axis; kernel `[in, features]`."""
  features: int
  kernel_axes: tuple[str, str]
  kernel_init: Initializer = default_kernel_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., in] -> [..., features]."""
    kernel = _param(self, 'kernel', self.kernel_init, (x.shape[-1], self.features),
                    self.kernel_axes, self.param_dtype)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class Embed(nn.Module):
  """Token embedding table `[V, E]`; `attend` gives tied logits."""
  num_embeddings: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = _param(self, 'embedding', nn.initializers.normal(stddev=1.0),
                            (self.num_embeddings, self.features), ('vocab', 'embed'),
                            self.param_dtype)

  def __call__(self, tokens: Array) -> Array:
    """[B, L] int -> [B, L, E]."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """[B, L, E] -> [B, L, V]."""
    return jnp.dot(x.astype(self.dtype), self.embedding.T.astype(self.dtype))


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> np.ndarray:
  """Maps relative positions (key - query) to T5's log-spaced buckets.

  Half the buckets (per direction when bidirectional) hold exact small distances, the
  rest grow logarithmically up to `max_distance`, beyond which all share the last bucket.
  Computed in numpy float32 at trace time, so every backend gets the same buckets.
  """
  relative_position = np.asarray(relative_position, np.int64)
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0) * num_buckets
    distance = np.abs(relative_position)
  else:
    distance = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  with np.errstate(divide='ignore'):
    log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact))
  large = max_exact + (log_ratio / np.float32(math.log(max_distance / max_exact))
                       * np.float32(num_buckets - max_exact))
  large = np.minimum(np.where(distance < max_exact, 0, large).astype(np.int64),
                     num_buckets - 1)
  return buckets + np.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
  """One `[H, buckets]` table per stack giving an additive attention bias."""
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_length: int) -> Array:
    """Query positions [Q] (may be traced), keys 0..K-1 -> bias [1, H, Q, K]."""
    table = _param(self, 'rel_embedding',
                   nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                   (self.num_heads, self.num_buckets), ('heads', 'relpos_buckets'),
                   self.param_dtype)
    every_offset = np.arange(-(key_length - 1), key_length)  # key - query.
    bucket_of_offset = jnp.asarray(relative_position_bucket(
        every_offset, self.bidirectional, self.num_buckets, self.max_distance))
    offsets = jnp.arange(key_length)[None, :] - query_positions[:, None]  # [Q, K]
    buckets = bucket_of_offset[offsets + key_length - 1]
    return jnp.take(table, buckets, axis=1)[None].astype(self.dtype)


class Attention(nn.Module):
  """Multi-head dot-product attention without 1/sqrt(D) scaling (folded into `query`).

  With `decode=True` the keys and values live in the `cache` collection: self-attention
  keeps `cache_length` slots and writes each new step at `decode_position`;
  cross-attention projects the encoder output once, when the cache is created.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _project(self, name: str, x: Array, init: Initializer) -> Array:
    """[B, L, E] -> [B, L, H, D]."""
    y = Dense(self.num_heads * self.head_dim, ('embed', 'joined_kv'), init,
              self.dtype, self.param_dtype, name=name)(x)
    y = y.reshape(*y.shape[:-1], self.num_heads, self.head_dim)
    return nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))

  def _cached_keys_values(self, inputs_kv: Optional[Array], is_cross: bool,
                          decode_position: Optional[Array], cache_length: Optional[int]):
    """Reads (and for self-attention writes) the decode cache; returns [B, K, H, D] twice."""
    creating = not self.has_variable('cache', 'cached_key')
    if is_cross and not creating:
      return self.get_variable('cache', 'cached_key'), self.get_variable('cache', 'cached_value')
    key = self._project('key', inputs_kv, default_kernel_init)
    value = self._project('value', inputs_kv, default_kernel_init)
    if is_cross:  # Encoder keys and values, projected once.
      return (self.variable('cache', 'cached_key', lambda: key).value,
              self.variable('cache', 'cached_value', lambda: value).value)
    shape = (key.shape[0], cache_length, *key.shape[2:])
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, value.dtype)
    if not creating:
      start = (0, decode_position, 0, 0)
      cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
      cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
    return cached_key.value, cached_value.value

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array], bias: Array, *,
               is_cross: bool = False, decode: bool = False,
               decode_position: Optional[Array] = None, cache_length: Optional[int] = None,
               deterministic: bool = True) -> Array:
    """inputs_q [B, Q, E], inputs_kv [B, K, E] (None for a cached cross step),
    bias [B or 1, H or 1, Q, K] -> [B, Q, E]."""
    query_init = nn.initializers.variance_scaling(1.0 / self.head_dim, 'fan_in', 'normal')
    query = self._project('query', inputs_q, query_init)
    if decode:
      key, value = self._cached_keys_values(inputs_kv, is_cross, decode_position, cache_length)
    else:
      key = self._project('key', inputs_kv, default_kernel_init)
      value = self._project('value', inputs_kv, default_kernel_init)
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key).astype(jnp.float32) + bias
    weights = jax.nn.softmax(logits).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, value)
    out = out.reshape(*out.shape[:2], self.num_heads * self.head_dim)
    return Dense(inputs_q.shape[-1], ('joined_kv', 'embed'), default_kernel_init,
                 self.dtype, self.param_dtype, name='out')(out)


class MLP(nn.Module):
  """T5 feed-forward block: gated (`wi_0`, `wi_1`) or plain (`wi`), then `wo`."""
  mlp_dim: int
  activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    """[B, L, E] -> [B, L, E]."""
    dense = functools.partial(Dense, self.mlp_dim, ('embed', 'mlp'), default_kernel_init,
                              self.dtype, self.param_dtype)
    if len(self.activations) == 1:
      hidden = ACTIVATIONS[self.activations[0]](dense(name='wi')(x))
    else:
      hidden = functools.reduce(jnp.multiply, [
          ACTIVATIONS[act](dense(name=f'wi_{i}')(x)) for i, act in enumerate(self.activations)])
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic=deterministic)
    return Dense(x.shape[-1], ('mlp', 'embed'), default_kernel_init, self.dtype,
                 self.param_dtype, name='wo')(hidden)


def attention_bias(query_mask: Array, key_mask: Array, causal: bool = False) -> Array:
  """query_mask [B, Q], key_mask [B, K] (1 = real) -> additive bias [B, 1, Q, K]."""
  allowed = query_mask[:, :, None].astype(bool) & key_mask[:, None, :].astype(bool)
  if causal:
    allowed &= jnp.tril(jnp.ones((query_mask.shape[1], key_mask.shape[1]), bool))
  return jnp.where(allowed, 0.0, NEG_INF)[:, None].astype(jnp.float32)
