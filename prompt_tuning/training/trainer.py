"""The train state, the trainable/frozen split, the optimiser and the jitted steps.

Trainable and frozen weights are separate trees: gradients are taken with respect to
the trainable tree only (so XLA never computes weight gradients of the frozen model),
optimiser state exists only for it, and the frozen tree may be cast to bf16.
"""

import functools
import re
from typing import Any, Optional, Sequence

import flax
import gin
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from prompt_tuning.model import models
from prompt_tuning.training import partitioning

Params = Any
PROMPT_ONLY = (r'encoder/prompt/.*',)


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; checkpoints save exactly this."""
  step: jax.Array  # [] int32.
  trainable: Params
  opt_state: optax.OptState
  rng: jax.Array  # Dropout key, split each step.


def _flat(params: Params) -> dict[str, Any]:
  return traverse_util.flatten_dict(params, sep='/')


def split_params(params: Params, trainable_patterns: Sequence[str]) -> tuple[Params, Params]:
  """(trainable, frozen): a parameter is trainable if its `/`-joined path fully matches
  any pattern (`encoder/prompt/.*` = a T5's prompt, `.*` = model tuning)."""
  flat = _flat(params)
  is_trainable = lambda path: any(re.fullmatch(p, path) for p in trainable_patterns)
  trainable = {path: value for path, value in flat.items() if is_trainable(path)}
  if not trainable:
    raise ValueError(f'TRAINABLE_PARAMETERS {list(trainable_patterns)} match no parameter; '
                     "leave runs.RunSetup.trainable_parameters unset (the model's prompt, "
                     'needs PROMPT_LENGTH > 0) or use .* (model tuning).')
  frozen = {path: value for path, value in flat.items() if path not in trainable}
  unflat = lambda tree: traverse_util.unflatten_dict(tree, sep='/')
  return unflat(trainable), unflat(frozen)


def merge_params(trainable: Params, frozen: Params) -> Params:
  """The inverse of `split_params`."""
  return traverse_util.unflatten_dict({**_flat(frozen), **_flat(trainable)}, sep='/')


def cast_frozen(frozen: Params, dtype: Optional[str]) -> Params:
  """Frozen weights in `dtype` (e.g. 'bfloat16' halves their memory); None keeps them."""
  if dtype is None:
    return frozen
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      frozen)


@gin.configurable
def adafactor(learning_rate: float = 0.3, decay_rate: float = 0.8,
              weight_decay_rate: float = 1e-5,
              multiply_by_parameter_scale: bool = False) -> optax.GradientTransformation:
  """The paper's optimiser: Adafactor, constant LR 0.3, decay 0.8, weight decay 1e-5,
  no parameter scaling. Any optax optimiser can be bound in gin instead."""
  if not callable(learning_rate) and not (isinstance(learning_rate, (int, float)) and
                                          0 <= learning_rate < float('inf')):
    raise ValueError(f'LEARNING_RATE={learning_rate!r} must be a finite number >= 0 (the '
                     "paper's is 0.3).")

  def with_learning_rate(learning_rate):
    return optax.adafactor(learning_rate, decay_rate=decay_rate,
                           weight_decay_rate=weight_decay_rate,
                           multiply_by_parameter_scale=multiply_by_parameter_scale)

  # inject_hyperparams keeps the learning rate in the optimiser state, for the metrics.
  return optax.inject_hyperparams(with_learning_rate)(learning_rate)


def train_step(model: models.EncoderDecoderModel, optimizer: optax.GradientTransformation,
               state: TrainState, frozen: Params, batch) -> tuple[TrainState, dict]:
  """One optimiser step on the trainable tree; `frozen` is read, never written.

  A step whose loss or gradient is not finite changes nothing but the step counter's
  metrics: the state comes back as it went in, and `metrics['finite']` is 0.
  """
  rng, dropout_rng = jax.random.split(state.rng)

  def loss_of(trainable):
    return model.loss_fn(merge_params(trainable, frozen), batch, dropout_rng)

  (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.trainable)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
  trainable = optax.apply_updates(state.trainable, updates)
  metrics['grad_norm'] = optax.tree_utils.tree_norm(grads)
  if isinstance(opt_state, optax.InjectStatefulHyperparamsState):
    metrics['learning_rate'] = opt_state.hyperparams['learning_rate']
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm']) & jnp.all(
      jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(trainable)]))
  metrics['finite'] = finite.astype(jnp.float32)
  keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return TrainState(jnp.where(finite, state.step + 1, state.step),
                    keep_if_finite(trainable, state.trainable),
                    keep_if_finite(opt_state, state.opt_state), rng), metrics


class Trainer:
  """Jits the train step once for a mesh, with explicit shardings and donation of the state."""

  def __init__(self, model: models.EncoderDecoderModel, optimizer: optax.GradientTransformation,
               state_shardings: Any, frozen_shardings: Any, batch_sharding: Any):
    self.train_step = jax.jit(functools.partial(train_step, model, optimizer),
                              in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                              out_shardings=(state_shardings, None), donate_argnums=(0,))


def init_state(trainable: Params, optimizer: optax.GradientTransformation, seed: int,
               trainable_shardings: Any, mesh: jax.sharding.Mesh) -> TrainState:
  """A step-0 state on `mesh`. XLA lays the optimiser slots out like their parameters;
  slots that do not depend on them (counts) are replicated."""
  trainable = jax.device_put(trainable, trainable_shardings)
  replicated = partitioning.replicated(mesh)
  on_mesh = lambda x: x if _on_every_device(x.sharding, mesh) else jax.device_put(x, replicated)
  opt_state = jax.tree.map(on_mesh, jax.jit(optimizer.init)(trainable))
  step, rng = jax.device_put((jnp.zeros((), jnp.int32), jax.random.PRNGKey(seed)), replicated)
  return TrainState(step, trainable, opt_state, rng)


def abstract_state(trainable: Params, optimizer: optax.GradientTransformation,
                   mesh: jax.sharding.Mesh) -> TrainState:
  """What `init_state` places, as `jax.ShapeDtypeStruct`s with the same shardings;
  `trainable` is such a tree too. Nothing is allocated (the planner's train state)."""
  replicated = partitioning.replicated(mesh)
  lowered = jax.jit(optimizer.init).lower(trainable)
  abstract = lambda x, sharding: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sharding if _on_every_device(sharding, mesh) else replicated)
  opt_state = jax.tree.map(abstract, lowered.out_info, lowered.compile().output_shardings)
  step, rng = jax.ShapeDtypeStruct((), jnp.int32), jax.eval_shape(jax.random.PRNGKey, 0)
  return TrainState(abstract(step, replicated), trainable, opt_state, abstract(rng, replicated))


def _on_every_device(sharding: jax.sharding.Sharding, mesh: jax.sharding.Mesh) -> bool:
  """Whether `sharding` lays an array out on `mesh` as the step's outputs are (a
  `NamedSharding` of it); anything else, e.g. one device's, is put there replicated, or the
  step would compile a second time for the shardings its first call returns."""
  return isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh


def with_hyperparams_of(restored: TrainState, configured: TrainState) -> TrainState:
  """`restored` with the optimiser hyperparameters (`inject_hyperparams`: the learning
  rate) of the freshly `configured` state, so a resumed run uses the rate it was given."""
  def swap(restored_state, configured_state):
    if isinstance(restored_state, optax.InjectStatefulHyperparamsState):
      return restored_state._replace(hyperparams=configured_state.hyperparams)
    return restored_state

  is_leaf = lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)
  opt_state = jax.tree.map(swap, restored.opt_state, configured.opt_state, is_leaf=is_leaf)
  return restored.replace(opt_state=opt_state)


def state_shardings(state: TrainState) -> TrainState:
  """The shardings of a placed state (step and rng replicated like everything small)."""
  return jax.tree.map(lambda x: x.sharding, state)
