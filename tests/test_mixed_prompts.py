"""Per-example prompts: in a mixed batch every example gets what its own prompt alone gives.

A frozen model (no prompt parameter) runs a `prompts.PromptTable` of three prompts of
lengths 2, 3 and 5; each example's logits, `score_batch` score and greedy decode must
equal those of the single-prompt model (`prompt_length=P_i`, the prompt as its
parameter), on one device and on a data 4 x model 2 mesh of CPU devices.
"""

import functools
import types

import jax
import numpy as np
import pytest

from conftest import make_batch
from prompt_tuning.model import models
from prompt_tuning.model import network
from prompt_tuning.model import prompts
from prompt_tuning.training import partitioning

CONFIG = network.T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                          num_decoder_layers=2, head_dim=8, mlp_dim=64, dtype='float32')
LENGTHS = (2, 3, 5)
PROMPT_IDS = np.array([0, 1, 2, 2, 1, 0, 1, 2], np.int32)
DECODE_LENGTH = 6


def _outputs(model, params, batch, prompt_table=None) -> dict:
  """logits [B, T, V], scores [B], greedy tokens [B, DECODE_LENGTH] and their scores [B]."""
  tokens, decode_scores = model.predict_batch(params, batch, max_decode_length=DECODE_LENGTH,
                                              prompt_table=prompt_table)
  return dict(logits=model.logits(params, batch, prompt_table=prompt_table),
              scores=model.score_batch(params, batch, prompt_table), tokens=tokens,
              decode_scores=decode_scores)


def _with_prompt(params, prompt):
  """Frozen params plus `prompt` [P, E] as the single-prompt model's parameter."""
  return {**params, 'encoder': {**params['encoder'], 'prompt': {'prompt': prompt}}}


def _assert_matches(actual: dict, expected: dict, batch):
  """Tokens identical; scores, and logits at the batch's real targets, within 1e-5
  relative (max norm) error. (Padded target positions attend to nothing real: their
  logits mean nothing.)"""
  actual, expected = jax.device_get((actual, expected))
  np.testing.assert_array_equal(actual['tokens'], expected['tokens'])
  real = np.asarray(batch['decoder_target_tokens']) > 0
  for name in ('logits', 'scores', 'decode_scores'):
    pick = (lambda x: x[real]) if name == 'logits' else np.asarray
    error = np.abs(pick(actual[name]) - pick(expected[name])).max() / np.abs(
        pick(expected[name])).max()
    assert error <= 1e-5, (name, error)


@pytest.fixture(scope='module')
def setup():
  """The frozen model and params, the mixed batch (B = 8), the prompts and their table,
  each prompt's outputs alone on the whole batch, and each example's expected outputs."""
  model = models.EncoderDecoderModel(network.Transformer(CONFIG))
  batch = make_batch([5, 3, 7, 1, 6, 4, 2, 7], [4, 2, 3, 4, 1, 4, 3, 2])
  params = model.init(jax.random.PRNGKey(0), batch)
  rng = np.random.RandomState(1)
  prompt_list = [rng.standard_normal((n, CONFIG.emb_dim)).astype(np.float32) for n in LENGTHS]
  alone = jax.device_get([jax.jit(functools.partial(
      _outputs, models.EncoderDecoderModel(network.Transformer(CONFIG, prompt_length=n))))(
          _with_prompt(params, prompt), batch) for n, prompt in zip(LENGTHS, prompt_list)])
  assert not np.allclose(alone[0]['logits'], alone[1]['logits'])  # The prompts matter.
  expected = {name: np.stack([alone[i][name][row] for row, i in enumerate(PROMPT_IDS)])
              for name in alone[0]}
  return types.SimpleNamespace(
      model=model, params=params, batch={**batch, 'prompt_ids': PROMPT_IDS},
      prompts=prompt_list, table=prompts.pad_prompts(prompt_list), alone=alone,
      expected=expected)


@pytest.fixture(scope='module')
def traced():
  """`_outputs` jitted for the frozen model, and a list that grows at each trace."""
  traces = []

  def run(model, params, batch, table):
    traces.append(1)
    return _outputs(model, params, batch, table)

  return jax.jit(run, static_argnums=0), traces


def test_pad_prompts_pads_on_the_left_with_zeros():
  table = prompts.pad_prompts([np.ones((2, 4)), 2 * np.ones((3, 4))])
  np.testing.assert_array_equal(table.lengths, [2, 3])
  np.testing.assert_array_equal(table.prompts[:, :, 0], [[0, 1, 1], [2, 2, 2]])
  prompt, mask = table.select(np.array([1, 0, 0]))
  np.testing.assert_array_equal(prompt[:, :, 0], [[2, 2, 2], [0, 1, 1], [0, 1, 1]])
  np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 1, 1], [0, 1, 1]])
  for bad in ([], [np.ones((2, 4)), np.ones((2, 5))], [np.ones(4)]):
    with pytest.raises(ValueError, match=r'\[P_i, E\] prompts with the same E'):
      prompts.pad_prompts(bad)


def test_mixed_batch_equals_each_prompt_alone(setup, traced):
  run, traces = traced
  _assert_matches(run(setup.model, setup.params, setup.batch, setup.table), setup.expected,
                  setup.batch)
  # Another mix of the same shapes reuses the compiled computation.
  order = np.argsort(-PROMPT_IDS, kind='stable')
  permute = lambda tree: jax.tree.map(lambda x: x[order], tree)
  _assert_matches(run(setup.model, setup.params, permute(setup.batch), setup.table),
                  permute(setup.expected), permute(setup.batch))
  assert len(traces) == 1


def test_mixed_batch_on_a_data_model_mesh(setup):
  mesh = partitioning.create_mesh(mesh_shape=(4, 2))
  param_shardings = partitioning.logical_shardings(mesh, setup.model.logical_axes(setup.batch))
  table_shardings = partitioning.logical_shardings(mesh, prompts.TABLE_AXES)
  batch_sharding = partitioning.batch_sharding(mesh)
  params = jax.device_put(setup.params, param_shardings)
  kernel = params['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'model')
  run = jax.jit(functools.partial(_outputs, setup.model),
                in_shardings=(param_shardings, batch_sharding, table_shardings))
  outputs = run(params, jax.device_put(setup.batch, batch_sharding),
                jax.device_put(setup.table, table_shardings))
  _assert_matches(outputs, setup.expected, setup.batch)


def test_a_table_of_one_prompt_is_the_prompted_model(setup):
  batch = {**setup.batch, 'prompt_ids': np.zeros_like(PROMPT_IDS)}
  outputs = jax.jit(functools.partial(_outputs, setup.model))(
      setup.params, batch, prompts.pad_prompts(setup.prompts[1:2]))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(outputs), setup.alone[1])


def test_padding_rows_are_masked(setup, traced):
  run, _ = traced
  table, longest = setup.table, max(LENGTHS)
  padding = np.arange(longest)[None, :] < (longest - table.lengths)[:, None]  # [N, P_max]
  garbage = 10 * np.random.RandomState(2).standard_normal(table.prompts.shape)
  noisy = table._replace(prompts=table.prompts + garbage * padding[..., None])
  _assert_matches(run(setup.model, setup.params, setup.batch, noisy), setup.expected,
                  setup.batch)
  unmasked = noisy._replace(lengths=np.full_like(table.lengths, longest))
  assert not np.allclose(run(setup.model, setup.params, setup.batch, unmasked)['logits'],
                         setup.expected['logits'])


def test_prompt_table_and_ids_go_together(setup):
  model, params, table = setup.model, setup.params, setup.table
  without_ids = {k: v for k, v in setup.batch.items() if k != 'prompt_ids'}
  with pytest.raises(ValueError, match='go together'):
    model.logits(params, setup.batch)
  with pytest.raises(ValueError, match='go together'):
    model.score_batch(params, without_ids, table)
  prompted = models.EncoderDecoderModel(network.Transformer(CONFIG, prompt_length=3))
  with pytest.raises(ValueError, match='build it with prompt_length=0'):
    prompted.logits(_with_prompt(params, setup.prompts[1]), setup.batch, prompt_table=table)
