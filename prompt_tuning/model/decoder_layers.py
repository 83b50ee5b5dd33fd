"""Decoder-only building blocks that T5's `layers.py` lacks: biased projections, Gemma's and
GPT-2's norms, rotary positions (with Llama 3's frequency scaling), grouped-query attention
with 1/sqrt(D) scaling and a KV cache, and an MLP with optional biases.

Shapes: B batch, Q / S query and key lengths, E embed, H query heads, K key/value heads
(H a multiple of K), D head_dim, F mlp. Parameters carry logical axis names (`embed`,
`joined_kv`, `mlp`); `layers.py` keeps T5's pieces, which the decoder reuses where the
maths is the same (`Embed`, `RMSNorm`, `attention_bias`, `NEG_INF`).
"""

import functools
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.model import layers

Array = jax.Array
Dtype = jnp.dtype

# T5's activations plus the Hugging Face names of the decoder families (all GELUs here are
# the tanh approximation: HF's `gelu_pytorch_tanh` for Gemma, `gelu_new` for GPT-2).
ACTIVATIONS = {**layers.ACTIVATIONS, 'silu': nn.silu, 'gelu_tanh': layers.ACTIVATIONS['gelu'],
               'gelu_new': layers.ACTIVATIONS['gelu']}


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


class Linear(nn.Module):
  """`layers.Dense` (kernel `[in, features]`) with an optional bias `[features]` (Qwen2's
  query/key/value, GPT-2's every projection)."""
  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., in] -> [..., features]."""
    kernel = _param(self, 'kernel', layers.default_kernel_init, (x.shape[-1], self.features),
                    self.kernel_axes, self.param_dtype)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = _param(self, 'bias', nn.initializers.zeros, (self.features,),
                    self.kernel_axes[1:], self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class PlusOneRMSNorm(nn.Module):
  """Gemma's RMSNorm: x / rms(x) * (1 + scale), all in float32. `scale` is HF's weight as
  stored (initialised to zeros), so checkpoints convert without arithmetic."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., E] -> [..., E]."""
    scale = _param(self, 'scale', nn.initializers.zeros, (x.shape[-1],), ('embed',),
                   self.param_dtype)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)


class LayerNorm(nn.Module):
  """GPT-2's LayerNorm: (x - mean) / std * scale + bias, statistics in float32."""
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., E] -> [..., E]."""
    param = lambda name, init: _param(self, name, init, (x.shape[-1],), ('embed',),
                                      self.param_dtype).astype(jnp.float32)
    scale, bias = param('scale', nn.initializers.ones), param('bias', nn.initializers.zeros)
    x = x.astype(jnp.float32)
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * scale + bias).astype(self.dtype)


def rotary_frequencies(head_dim: int, theta: float, llama3_scaling: Optional[tuple] = None
                       ) -> np.ndarray:
  """Inverse frequencies [D / 2] (float32, as HF computes them).

  `llama3_scaling` = (factor, low_freq_factor, high_freq_factor, original_max_positions):
  Llama 3's `rope_type: llama3` divides long wavelengths by `factor`, keeps short ones and
  interpolates smoothly in between.
  """
  exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)
  if llama3_scaling is None:
    return inv_freq
  factor, low, high, original = llama3_scaling
  wavelength = 2 * math.pi / inv_freq
  scaled = np.where(wavelength > original / low, inv_freq / factor, inv_freq)
  smooth = (original / wavelength - low) / (high - low)
  medium = (wavelength >= original / high) & (wavelength <= original / low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary_tables(positions: Array, inv_freq: np.ndarray, dtype: Dtype) -> tuple[Array, Array]:
  """positions [B, Q] int -> (cos, sin) [B, Q, D], angles in float32, cast to `dtype`."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates each head's halves (HF's `rotate_half` layout): x [B, Q, N, D] -> [B, Q, N, D]."""
  first, second = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return x * cos[:, :, None] + rotated * sin[:, :, None]


class Attention(nn.Module):
  """Causal grouped-query attention (K key/value heads shared by H / K query heads each),
  logits scaled by 1/sqrt(D). With `cache_index` the keys and values of these Q positions
  are written to the `cache` collection (`cached_key`, `cached_value` [B, S, K, D]) at that
  slot and attention reads all S slots (the bias masks unwritten ones).
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  out_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _project(self, name: str, x: Array, heads: int) -> Array:
    """[B, Q, E] -> [B, Q, heads, D]."""
    y = Linear(heads * self.head_dim, ('embed', 'joined_kv'), self.qkv_bias, self.dtype,
               self.param_dtype, name=name)(x)
    return y.reshape(*y.shape[:-1], heads, self.head_dim)

  def _cached(self, name: str, x: Array, cache_index: Array, cache_length: int) -> Array:
    """Writes x [B, Q, K, D] at `cache_index`; returns the whole cache [B, S, K, D]."""
    shape = (x.shape[0], cache_length, *x.shape[2:])
    cached = self.variable('cache', name, jnp.zeros, shape, x.dtype)
    cached.value = jax.lax.dynamic_update_slice(cached.value, x, (0, cache_index, 0, 0))
    return cached.value

  @nn.compact
  def __call__(self, x: Array, bias: Array, rope: Optional[tuple[Array, Array]],
               cache_index: Optional[Array] = None,
               cache_length: Optional[int] = None) -> Array:
    """x [B, Q, E], bias [B, 1, Q, S] (S = Q without a cache), rope (cos, sin) [B, Q, D] or
    None -> [B, Q, E]."""
    query = self._project('query', x, self.num_heads)
    key = self._project('key', x, self.num_kv_heads)
    value = self._project('value', x, self.num_kv_heads)
    query = nn.with_logical_constraint(query, ('batch', 'length', 'heads', 'kv'))
    if rope is not None:
      query, key = apply_rotary(query, *rope), apply_rotary(key, *rope)
    if cache_index is not None:
      key = self._cached('cached_key', key, cache_index, cache_length)
      value = self._cached('cached_value', value, cache_index, cache_length)
    batch, length = query.shape[:2]
    groups = self.num_heads // self.num_kv_heads
    query = query.reshape(batch, length, self.num_kv_heads, groups, self.head_dim)
    logits = jnp.einsum('bqkgd,bskd->bkgqs', query, key).astype(jnp.float32)
    logits = logits / np.float32(math.sqrt(self.head_dim)) + bias[:, :, None]
    weights = jax.nn.softmax(logits).astype(self.dtype)
    out = jnp.einsum('bkgqs,bskd->bqkgd', weights, value)
    out = out.reshape(batch, length, self.num_heads * self.head_dim)
    return Linear(x.shape[-1], ('joined_kv', 'embed'), self.out_bias, self.dtype,
                  self.param_dtype, name='out')(out)


class MLP(nn.Module):
  """Gated (`wi_0` activated times `wi_1`: Llama's gate/up) or plain (`wi`) feed-forward,
  then `wo`; biases optional (GPT-2)."""
  mlp_dim: int
  activations: Sequence[str] = ('silu', 'linear')
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[B, L, E] -> [B, L, E]."""
    dense = functools.partial(Linear, self.mlp_dim, ('embed', 'mlp'), self.use_bias, self.dtype,
                              self.param_dtype)
    names = ['wi'] if len(self.activations) == 1 else [f'wi_{i}' for i in range(2)]
    hidden = functools.reduce(jnp.multiply, [ACTIVATIONS[act](dense(name=name)(x))
                                             for name, act in zip(names, self.activations)])
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    return Linear(x.shape[-1], ('mlp', 'embed'), self.use_bias, self.dtype, self.param_dtype,
                  name='wo')(hidden)
