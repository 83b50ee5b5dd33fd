"""Soft prompts joined to the encoder's embedded inputs: one trained prompt, or a table.

Training learns one `[P, E]` parameter (`Prompt`). A frozen model can also serve many
tasks in one batch: a `PromptTable` holds N prompts `[N, P_max, E]`, each padded on the
left to P_max, and `batch['prompt_ids']` `[B]` picks each example's row. Either way the
encoder gets a per-example prompt `[B, P, E]` and its mask `[B, P]` and puts it before
the inputs (`prefix`). Real prompt positions are always attended (mask 1) by encoder
self-attention and the decoder's cross-attention; the left padding never is (mask 0).
Since T5's relative position bias depends only on key - query, padding on the left keeps
every distance between a prompt and its inputs, so an example's result equals running
its prompt alone.
"""

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from prompt_tuning.model import initializers

Array = jax.Array


def get_at(params, path: str):
  """The subtree of nested dicts `params` at the `/`-joined `path` (e.g. a model's
  `prompt_path`)."""
  for key in path.split('/'):
    params = params[key]
  return params


def set_at(params, path: str, value) -> None:
  """Puts `value` at the `/`-joined `path` of nested dicts `params`, making missing levels."""
  *parents, last = path.split('/')
  for key in parents:
    params = params.setdefault(key, {})
  params[last] = value


def pop_at(params, path: str):
  """Removes the leaf at the `/`-joined `path` of nested dicts `params` and returns it, with
  every level left empty; None if there is none."""
  *parents, last = path.split('/')
  levels = [params]
  for key in parents:
    if key not in levels[-1]:
      return None
    levels.append(levels[-1][key])
  value = levels[-1].pop(last, None)
  for level, key in zip(reversed(levels[:-1]), reversed(parents)):
    if not level[key]:
      del level[key]
  return value


def prefix(prompt: Array, prompt_mask: Array, embedded: Array,
           mask: Array) -> tuple[Array, Array]:
  """Puts each example's prompt before its inputs.

  Args:
    prompt: [B, P, E].
    prompt_mask: [B, P], 1 for real prompt rows, 0 for padding.
    embedded: [B, L, E] embedded input tokens.
    mask: [B, L], 1 for real tokens, 0 for padding.

  Returns:
    ([B, P + L, E] embeddings, [B, P + L] mask).
  """
  return (jnp.concatenate([prompt.astype(embedded.dtype), embedded], axis=1),
          jnp.concatenate([prompt_mask.astype(mask.dtype), mask], axis=1))


class Prompt(nn.Module):
  """`length` learned vectors, the only parameters trained in prompt tuning.

  The parameter is `prompt` `[P, E]` with logical axes `('prompt', 'embed')`; the
  initializer also receives the model's token embedding table `[V, E]`.
  """
  length: int
  initializer: initializers.PromptInitializer

  @nn.compact
  def __call__(self, batch: int, embeddings: Array) -> tuple[Array, Array]:
    """embeddings [V, E] -> (the prompt for each of `batch` examples [B, P, E],
    mask [B, P] of ones)."""
    init = lambda rng, shape: self.initializer(rng, shape, embeddings).astype(jnp.float32)
    prompt = self.param('prompt', nn.with_logical_partitioning(init, ('prompt', 'embed')),
                        (self.length, embeddings.shape[-1]))
    return (jnp.broadcast_to(prompt[None], (batch, *prompt.shape)),
            jnp.ones((batch, self.length), jnp.int32))


class PromptTable(NamedTuple):
  """N prompts for per-example lookup (a pytree: pass it through `jax.jit`).

  Attributes:
    prompts: [N, P_max, E]; prompt i fills the last `lengths[i]` rows, the rows before
      are padding (zeros from `pad_prompts`, never attended).
    lengths: [N] int32, each P_i <= P_max.
  """
  prompts: Array
  lengths: Array

  def select(self, prompt_ids: Array) -> tuple[Array, Array]:
    """prompt_ids [B] in [0, N) -> (each example's prompt [B, P_max, E], mask [B, P_max],
    0 on padding)."""
    max_length = self.prompts.shape[1]
    starts = max_length - jnp.take(self.lengths, prompt_ids)
    mask = jnp.arange(max_length)[None, :] >= starts[:, None]
    return jnp.take(self.prompts, prompt_ids, axis=0), mask.astype(jnp.int32)


# Logical axes of a `PromptTable`: replicated (partitioning.LOGICAL_AXIS_RULES).
TABLE_AXES = PromptTable(PartitionSpec('prompts', 'prompt', 'embed'), PartitionSpec('prompts'))


def pad_prompts(prompts: Sequence[np.ndarray]) -> PromptTable:
  """Prompts [P_i, E] -> a `PromptTable`, each left-padded with zeros to P_max = max P_i."""
  shapes = [np.shape(p) for p in prompts]
  if not shapes or any(len(s) != 2 for s in shapes) or len({s[1] for s in shapes}) != 1:
    raise ValueError('pad_prompts needs one or more [P_i, E] prompts with the same E, got '
                     f'shapes {shapes}.')
  lengths = np.array([len(p) for p in prompts], np.int32)
  table = np.zeros((len(prompts), lengths.max(), shapes[0][1]), np.float32)
  for row, prompt in zip(table, prompts):
    row[len(row) - len(prompt):] = prompt
  return PromptTable(table, lengths)
