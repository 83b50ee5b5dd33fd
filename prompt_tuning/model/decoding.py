"""Autoregressive decoding over a KV cache: greedy, sampling and beam search.

Each decoder is a jit-able `lax.while_loop` driven by

    tokens_to_logits(tokens [N, 1], cache) -> (logits [N, V], new cache)

where N is the batch (times beams for beam search). Cache leaves have the batch as their
first axis, except scalars (the shared decode position), which are never gathered.
Decoders return `(tokens [B, T], scores [B])`: generated ids, EOS included and zeros
after it, and the sequence score (sum of log-probs; beam search: length-normalised).
Decoders are configured in gin, e.g. `decoding.beam_search.num_beams = 4`.
"""

from typing import Any, Callable, Optional

import gin
import jax
import jax.numpy as jnp

Array = jax.Array
Cache = Any
TokensToLogits = Callable[[Array, Cache], tuple[Array, Cache]]
NEG_INF = -1.0e9


def _check_length(max_decode_length: int):
  if max_decode_length <= 0:
    raise ValueError(f'max_decode_length must be positive, got {max_decode_length}; '
                     'set the target feature length (or max_decode_length) to at least 1.')


def _filter_logits(logits: Array, top_k: int, top_p: float) -> Array:
  """Keeps the `top_k` largest logits and the smallest set whose probability reaches
  `top_p` (the top token always stays); the rest become NEG_INF. [N, V] -> [N, V]."""
  if top_k > 0:
    kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth_largest, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


@gin.configurable
def sample(tokens_to_logits: TokensToLogits, cache: Cache, *, batch_size: int,
           max_decode_length: int, rng: Optional[Array] = None, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, eos_id: int = 1,
           start_id: int = 0) -> tuple[Array, Array]:
  """Temperature sampling with optional top-k / nucleus (top-p) filtering.

  `temperature=0` picks the most likely token (greedy). Stops when every sequence has
  produced EOS or after `max_decode_length` tokens.
  """
  _check_length(max_decode_length)
  if temperature > 0 and rng is None:
    raise ValueError('sampling with temperature > 0 needs an rng; pass rng or use greedy.')
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def not_done(state):
    step, _, _, _, finished, _, _ = state
    return (step < max_decode_length) & ~jnp.all(finished)

  def body(state):
    step, last, cache, tokens, finished, scores, rng = state
    logits, cache = tokens_to_logits(last[:, None], cache)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    if temperature == 0:
      chosen = jnp.argmax(logits, axis=-1)
    else:
      rng, key = jax.random.split(rng)
      chosen = jax.random.categorical(key, _filter_logits(logits / temperature, top_k, top_p))
    chosen = jnp.where(finished, 0, chosen).astype(jnp.int32)
    chosen_log_prob = jnp.take_along_axis(log_probs, chosen[:, None], axis=-1)[:, 0]
    scores = scores + jnp.where(finished, 0.0, chosen_log_prob)
    tokens = tokens.at[:, step].set(chosen)
    return step + 1, chosen, cache, tokens, finished | (chosen == eos_id), scores, rng

  state = (jnp.array(0), jnp.full((batch_size,), start_id, jnp.int32), cache,
           jnp.zeros((batch_size, max_decode_length), jnp.int32),
           jnp.zeros((batch_size,), bool), jnp.zeros((batch_size,), jnp.float32), rng)
  _, _, _, tokens, _, scores, _ = jax.lax.while_loop(not_done, body, state)
  return tokens, scores


@gin.configurable
def greedy(tokens_to_logits: TokensToLogits, cache: Cache, *, batch_size: int,
           max_decode_length: int, rng: Optional[Array] = None, eos_id: int = 1,
           start_id: int = 0) -> tuple[Array, Array]:
  """The most likely token at each step (same as Hugging Face's greedy `generate`)."""
  del rng
  return sample(tokens_to_logits, cache, batch_size=batch_size,
                max_decode_length=max_decode_length, temperature=0.0, eos_id=eos_id,
                start_id=start_id)


def _gather(tree, flat_indices: Array):
  """Picks batch rows of every non-scalar leaf: [N, ...] -> [len(indices), ...]."""
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, flat_indices, axis=0), tree)


def _take_beams(x: Array, beams: Array) -> Array:
  """x [B, K, ...], beams [B, M] -> [B, M, ...]."""
  return jnp.take_along_axis(x, beams.reshape(*beams.shape, *([1] * (x.ndim - 2))), axis=1)


@gin.configurable
def beam_search(tokens_to_logits: TokensToLogits, cache: Cache, *, batch_size: int,
                max_decode_length: int, rng: Optional[Array] = None, num_beams: int = 4,
                length_penalty: float = 1.0, eos_id: int = 1,
                start_id: int = 0) -> tuple[Array, Array]:
  """Beam search with Hugging Face `generate`'s semantics (early_stopping=False).

  Each step keeps the 2K best continuations of the K live beams; among the top K of
  those, sequences that end (EOS, or the length limit) become finished hypotheses scored
  `sum log p / length ** length_penalty` (length counts generated tokens, EOS included);
  the K best unfinished continue. A batch row stops once its K finished slots are full
  and its best live beam, normalised at the current length, cannot beat the worst.
  """
  _check_length(max_decode_length)
  del rng
  k, length = num_beams, max_decode_length
  first_k = jnp.arange(2 * k) < k
  flat_rows = lambda beams: (jnp.arange(batch_size)[:, None] * k + beams).reshape(-1)

  def body(state):
    step, live, live_scores, done, done_scores, done_full, improvable, cache, _ = state
    last = jnp.where(step == 0, start_id,
                     jnp.take(live, jnp.maximum(step - 1, 0), axis=2)).reshape(-1)
    logits, cache = tokens_to_logits(last[:, None], cache)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch_size, k, -1)
    vocab = log_probs.shape[-1]
    totals = (log_probs + live_scores[:, :, None]).reshape(batch_size, k * vocab)
    cand_scores, cand_index = jax.lax.top_k(totals, 2 * k)  # [B, 2K]
    cand_beam, cand_token = cand_index // vocab, (cand_index % vocab).astype(jnp.int32)
    cand_seqs = _take_beams(live, cand_beam).at[:, :, step].set(cand_token)  # [B, 2K, T]
    ends = (cand_token == eos_id) | (step + 1 >= length)
    # The K best continuations that did not end stay live.
    keep_scores, keep = jax.lax.top_k(cand_scores + ends * NEG_INF, k)
    live = _take_beams(cand_seqs, keep)
    cache = _gather(cache, flat_rows(_take_beams(cand_beam, keep)))
    # Endings among the top K candidates compete with the finished hypotheses.
    new_done = ends & first_k & improvable[:, None]
    normalised = cand_scores / (step + 1.0) ** length_penalty + ~new_done * NEG_INF
    merged_scores, best = jax.lax.top_k(jnp.concatenate([done_scores, normalised], 1), k)
    done = _take_beams(jnp.concatenate([done, cand_seqs], 1), best)
    done_full = _take_beams(jnp.concatenate([done_full, new_done], 1), best)
    best_live = keep_scores[:, 0] / (step + 1.0) ** length_penalty
    worst_done = jnp.where(done_full, jnp.min(merged_scores, axis=1, keepdims=True), NEG_INF)
    improvable &= jnp.any(best_live[:, None] > worst_done, axis=1)
    finished = ~jnp.any(improvable) | jnp.all(ends)
    return (step + 1, live, keep_scores, done, merged_scores, done_full, improvable, cache,
            finished)

  cache = _gather(cache, jnp.repeat(jnp.arange(batch_size), k))
  state = (jnp.array(0), jnp.zeros((batch_size, k, length), jnp.int32),
           jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF), (batch_size, 1)),
           jnp.zeros((batch_size, k, length), jnp.int32), jnp.full((batch_size, k), NEG_INF),
           jnp.zeros((batch_size, k), bool), jnp.ones((batch_size,), bool), cache,
           jnp.array(False))
  state = jax.lax.while_loop(lambda s: ~s[-1], body, state)
  return state[3][:, 0], state[4][:, 0]
