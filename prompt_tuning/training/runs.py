"""What train, evaluate and infer share: the run's model, weights, mesh and restored state.

`RunSetup` is bound once in `gin/runs/prompt_finetune.gin`; `prepare` turns it into a
placed, possibly resumed `PreparedRun`.
"""

import dataclasses
import posixpath
import re
from typing import Any, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.formats import initial_checkpoint
from prompt_tuning.model import models
from prompt_tuning.model import prompts
from prompt_tuning.training import checkpoints
from prompt_tuning.training import data
from prompt_tuning.training import partitioning
from prompt_tuning.training import trainer

Params = Any


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunSetup:
  """One run: which model, which frozen weights, which parameters train, where it lives."""
  model_dir: str  # MODEL_DIR: checkpoints, logs and exports.
  model: models.EncoderDecoderModel
  optimizer: optax.GradientTransformation
  initial_checkpoint_path: Optional[str] = None  # Frozen weights; None = random (tests).
  # Regexes over `/` paths; None: the model's prompt (`model.prompt_path`) only.
  trainable_parameters: Optional[Sequence[str]] = None
  frozen_dtype: Optional[str] = None  # FROZEN_DTYPE, e.g. 'bfloat16'.
  task_modules: Sequence[str] = ()  # MIXTURE_OR_TASK_MODULE.
  seed: int = 0

  def __post_init__(self):
    if self.trainable_parameters is None:
      prompt_scope = posixpath.dirname(self.model.prompt_path)
      object.__setattr__(self, 'trainable_parameters', (f'{re.escape(prompt_scope)}/.*',))


@dataclasses.dataclass
class PreparedRun:
  """Placed arrays and jitted steps, ready to train or evaluate."""
  mesh: jax.sharding.Mesh
  state: trainer.TrainState
  frozen: Params
  frozen_record: dict  # {'path', 'fingerprint'} of the frozen weights.
  steps: trainer.Trainer
  checkpoints: checkpoints.RunCheckpoints


def abstract_params(model: models.EncoderDecoderModel, shapes, shardings) -> Params:
  """The model's parameters as `jax.ShapeDtypeStruct`s carrying `shardings`; nothing
  allocated."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      jax.eval_shape(model.init, jax.random.PRNGKey(0), shapes), shardings)


def load_model_params(model: models.EncoderDecoderModel, mesh, shapes,
                      initial_checkpoint_path: Optional[str], seed: int) -> tuple[Params, Any]:
  """(params, their shardings): frozen weights from the checkpoint (or random), and a
  freshly initialised prompt, each placed straight into its sharding."""
  shardings = partitioning.logical_shardings(mesh, model.logical_axes(shapes))
  rng = jax.random.PRNGKey(seed)
  if not initial_checkpoint_path:
    zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
    return jax.jit(model.init, out_shardings=shardings)(rng, zeros), shardings
  abstract = abstract_params(model, shapes, shardings)
  prompt = prompts.pop_at(abstract, model.prompt_path)
  params = initial_checkpoint.load_params(initial_checkpoint_path, abstract)
  if prompt is not None:
    embeddings = params['token_embedder']['embedding']
    init = jax.jit(lambda key: model.initial_prompt(key, embeddings).astype(prompt.dtype),
                   out_shardings=prompt.sharding)
    prompts.set_at(params, model.prompt_path, init(rng))
  return params, shardings


def frozen_weights(setup: RunSetup, shapes, mesh: jax.sharding.Mesh) -> tuple[Params, dict]:
  """(the run's frozen weights placed on `mesh`, their record {'path', 'fingerprint'}):
  `prepare`'s, without reading or writing MODEL_DIR. What a `prompt_bank.PromptBank`'s
  prompts run on, through `setup.model.without_prompt()`."""
  data.import_task_modules(setup.task_modules)
  params, _ = load_model_params(setup.model, mesh, shapes, setup.initial_checkpoint_path,
                                setup.seed)
  trainable, frozen = trainer.split_params(params, setup.trainable_parameters)
  if set(checkpoints.trainable_shapes(trainable)) != {setup.model.prompt_path}:
    raise ValueError('prompts from --prompt need a prompt-tuning run configuration (only '
                     f"'{setup.model.prompt_path}' trained), not model tuning; drop "
                     'runs/model_finetune.gin.')
  frozen = trainer.cast_frozen(frozen, setup.frozen_dtype)
  return frozen, _frozen_record(setup, frozen)


def _frozen_record(setup: RunSetup, frozen: Params) -> dict:
  return {'path': setup.initial_checkpoint_path or f'random init (seed {setup.seed})',
          'fingerprint': checkpoints.fingerprint(frozen)}


def prepare(setup: RunSetup, shapes, checkpoint_config: checkpoints.CheckpointConfig,
            mesh: Optional[jax.sharding.Mesh] = None) -> PreparedRun:
  """Loads the weights, splits them, and resumes from MODEL_DIR's newest checkpoint.

  Writes nothing: a checkpoint that does not fit this run (other trainable shapes, other
  frozen weights, another optimiser) is refused before anything changes in MODEL_DIR. A
  resumed run takes its optimiser's hyperparameters (the learning rate) from the gin
  config, not from the checkpoint.
  """
  data.import_task_modules(setup.task_modules)
  mesh = mesh or partitioning.create_mesh()
  params, shardings = load_model_params(setup.model, mesh, shapes,
                                        setup.initial_checkpoint_path, setup.seed)
  trainable, frozen = trainer.split_params(params, setup.trainable_parameters)
  trainable_shardings, frozen_shardings = trainer.split_params(shardings,
                                                               setup.trainable_parameters)
  frozen = trainer.cast_frozen(frozen, setup.frozen_dtype)
  frozen_record = _frozen_record(setup, frozen)
  state = trainer.init_state(trainable, setup.optimizer, setup.seed, trainable_shardings, mesh)
  run_checkpoints = checkpoints.RunCheckpoints(setup.model_dir, checkpoint_config)
  latest = run_checkpoints.latest_step()
  if latest is not None:
    checkpoints.check_resumable(run_checkpoints.read_meta(latest), trainable, frozen_record)
    state = trainer.with_hyperparams_of(run_checkpoints.restore(latest, state), state)
  steps = trainer.Trainer(setup.model, setup.optimizer, trainer.state_shardings(state),
                          frozen_shardings, partitioning.batch_sharding(mesh))
  return PreparedRun(mesh, state, frozen, frozen_record, steps, run_checkpoints)
