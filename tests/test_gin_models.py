"""Every shipped model and prompt gin file builds; parameter counts match the published ones."""

import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paths import VOCAB_PATH
from prompt_tuning import gin_config
from prompt_tuning.model import models
from prompt_tuning.model import prompts

# Published T5 1.1 sizes (rounded as in the T5 1.1 release notes).
PUBLISHED = {'small': 77e6, 'base': 248e6, 'large': 783e6, 'xl': 2.85e9, 'xxl': 11.1e9}
SHAPES = {name: jax.ShapeDtypeStruct((1, 8), jnp.int32) for name in
          ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')}


def _build(gin_files, bindings=()):
  gin_config.parse(gin_files, bindings)
  return models.build_model()


def _count(model):
  axes = model.logical_axes(SHAPES)  # Abstract: nothing is materialised.
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), SHAPES)
  assert jax.tree.structure(axes) == jax.tree.structure(shapes)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_all_sizes_are_shipped():
  assert gin_config.model_sizes() == sorted(['tiny', *PUBLISHED])


@pytest.mark.parametrize('size', sorted(PUBLISHED))
def test_model_gin_builds_with_published_parameter_count(size):
  count = _count(_build([gin_config.model_gin_file(size)]))
  assert abs(count - PUBLISHED[size]) / PUBLISHED[size] < 0.005, f'{size}: {count:,}'


def test_unknown_size_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown T5 1.1 size 'huge'; choose one of base, large"):
    gin_config.model_gin_file('huge')
  with pytest.raises(FileNotFoundError, match='model sizes available: base, large'):
    gin_config.parse(['models/t5_1_1_huge.gin'])


PROMPT_BINDINGS = {
    'uniform.gin': [],
    'sampled_vocab.gin': [],
    'class_labels.gin': ["CLASS_LABELS = ['negative', 'positive']",
                         f"VOCABULARY_PATH = '{VOCAB_PATH}'", "MIXTURE_OR_TASK_NAME = 'unused'",
                         'MIXTURE_OR_TASK_MODULE = []'],
    'text.gin': ["PROMPT_TEXT = 'Is this review positive?'", f"VOCABULARY_PATH = '{VOCAB_PATH}'",
                 "MIXTURE_OR_TASK_NAME = 'unused'", 'MIXTURE_OR_TASK_MODULE = []'],
    'from_file.gin': ["PROMPT_FILE = '{tmp}/prompt.npy'"],
}


@pytest.mark.parametrize('model_file', ['t5_1_1_tiny.gin', 'decoder_tiny.gin'])
@pytest.mark.parametrize('prompt_file', sorted(os.listdir(os.path.join(gin_config.GIN_DIR,
                                                                      'prompts'))))
def test_prompt_gin_builds_a_prompted_tiny_model(prompt_file, model_file, tmp_path):
  np.save(tmp_path / 'prompt.npy', np.zeros((7, 32), np.float32))
  bindings = [b.format(tmp=tmp_path) for b in PROMPT_BINDINGS[prompt_file]]
  model = _build([f'models/{model_file}', f'prompts/{prompt_file}'],
                 ['PROMPT_LENGTH = 7', *bindings])
  shapes = model.batch_shapes({'inputs': 8, 'targets': 8}, 1)
  params = model.init(jax.random.PRNGKey(0), {k: jnp.ones(v.shape, v.dtype)
                                              for k, v in shapes.items()})
  assert prompts.get_at(params, model.prompt_path).shape == (7, 32)


def test_misspelled_binding_names_the_binding():
  with pytest.raises(ValueError, match='T5Config.emb_dimm'):
    gin_config.parse(['models/t5_1_1_tiny.gin'], ['network.T5Config.emb_dimm = 3'])


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.mark.parametrize('model_file, prompt', [('t5_1_1_tiny.gin', 'encoder/prompt/.*'),
                                                ('decoder_tiny.gin', 'decoder/prompt/.*')])
@pytest.mark.parametrize('run_file', sorted(os.listdir(os.path.join(gin_config.GIN_DIR, 'runs'))))
def test_run_gin_files_parse_and_build(run_file, model_file, prompt):
  from prompt_tuning.training import runs  # pylint: disable=g-import-not-at-top
  layers = [] if run_file == 'prompt_finetune.gin' else [f'runs/{run_file}']
  gin_config.parse([f'models/{model_file}', 'prompts/uniform.gin', 'runs/prompt_finetune.gin',
                    *layers], ["MODEL_DIR = '/tmp/unused'", "MIXTURE_OR_TASK_NAME = 'unused'"])
  setup = runs.RunSetup()
  tunes_model = run_file == 'model_finetune.gin'
  assert list(setup.trainable_parameters) == (['.*'] if tunes_model else [prompt])
  assert setup.model.module.prompt_length == (0 if tunes_model else 100)
