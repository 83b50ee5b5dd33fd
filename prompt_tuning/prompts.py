"""The soft prompt: a `[P, E]` parameter joined to the encoder's embedded inputs.

A `combine` function decides where the prompt goes; the prompt positions are always
attended (their mask is 1), so both encoder self-attention and the decoder's
cross-attention see them.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import initializers

Array = jax.Array
Combine = Callable[[Array, Array, Array], tuple[Array, Array]]


def prefix(prompt: Array, embedded: Array, mask: Array) -> tuple[Array, Array]:
  """Puts the prompt before the inputs.

  Args:
    prompt: [P, E].
    embedded: [B, L, E] embedded input tokens.
    mask: [B, L], 1 for real tokens, 0 for padding.

  Returns:
    ([B, P + L, E] embeddings, [B, P + L] mask with ones on the prompt positions).
  """
  batch = embedded.shape[0]
  prompt = jnp.broadcast_to(prompt[None].astype(embedded.dtype), (batch, *prompt.shape))
  prompt_mask = jnp.ones((batch, prompt.shape[1]), mask.dtype)
  return (jnp.concatenate([prompt, embedded], axis=1),
          jnp.concatenate([prompt_mask, mask], axis=1))


class Prompt(nn.Module):
  """`length` learned vectors, the only parameters trained in prompt tuning.

  The parameter is `prompt` `[P, E]` with logical axes `('prompt', 'embed')`; the
  initializer also receives the model's token embedding table `[V, E]`.
  """
  length: int
  initializer: initializers.PromptInitializer
  combine: Combine = prefix

  @nn.compact
  def __call__(self, embedded: Array, mask: Array, embeddings: Array) -> tuple[Array, Array]:
    """embedded [B, L, E], mask [B, L], embeddings [V, E] -> ([B, P + L, E], [B, P + L])."""
    init = lambda rng, shape: self.initializer(rng, shape, embeddings).astype(jnp.float32)
    prompt = self.param('prompt', nn.with_logical_partitioning(init, ('prompt', 'embed')),
                        (self.length, embedded.shape[-1]))
    return self.combine(prompt, embedded, mask)
