"""For the checkpoint tests: a tiny T5, its random weights, and loading them as a run does."""

import jax
import numpy as np

from prompt_tuning.model import models
from prompt_tuning.model import network
from prompt_tuning.training import partitioning
from prompt_tuning.training import runs

TINY = network.T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                        num_decoder_layers=2, head_dim=8, mlp_dim=64, dtype='float32')
SHAPES = models.EncoderDecoderModel.batch_shapes({'inputs': 8, 'targets': 4}, batch_size=8)


def random_params(config: network.T5Config = TINY, seed: int = 0):
  """Random weights of `config` (no prompt) as numpy arrays, N(0, 0.1^2); nothing compiled."""
  model = models.EncoderDecoderModel(network.Transformer(config))
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda x: (0.1 * rng.standard_normal(x.shape)).astype(x.dtype),
                      jax.eval_shape(model.init, jax.random.PRNGKey(0), SHAPES))


def load(path: str, config: network.T5Config = TINY, mesh_shape=(4, 2)):
  """(params, shardings) as `runs.load_model_params` places them on a data x model mesh."""
  model = models.EncoderDecoderModel(network.Transformer(config))
  mesh = partitioning.create_mesh(mesh_shape=mesh_shape)
  return runs.load_model_params(model, mesh, SHAPES, path, seed=0)


def assert_placed(params, shardings, expected):
  """Every leaf equals `expected` and sits in its sharding."""
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), expected)
  for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert leaf.sharding == sharding, (leaf.sharding, sharding)
