r"""Prints a gin-configured model's parameters: frozen, prompt, and the prompt's share.

    python -m prompt_tuning.summary --gin_file=models/t5_1_1_xxl.gin \
        --gin_file=prompts/uniform.gin --gin.PROMPT_LENGTH=100

Shapes only (`jax.eval_shape`): an XXL model is summarised without allocating it.
"""

import jax
import numpy as np

from prompt_tuning import gin_config
from prompt_tuning.model import models


def parameter_table(model: models.EncoderDecoderModel) -> list[tuple[str, tuple, str]]:
  """(path, shape, logical axes) of every parameter, in tree order."""
  shapes = model.batch_shapes({'inputs': 8, 'targets': 8}, 1)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), shapes)
  axes = model.logical_axes(shapes)
  rows = []
  for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params),
                                jax.tree.leaves(axes, is_leaf=lambda x: x is None or
                                                isinstance(x, jax.sharding.PartitionSpec))):
    name = '/'.join(key.key for key in path)
    rows.append((name, leaf.shape, ', '.join(str(a) for a in spec)))
  return rows


def main(argv):
  del argv
  gin_config.parse_flags()
  model = models.build_model()
  rows = parameter_table(model)
  count = lambda keep: sum(int(np.prod(shape)) for name, shape, _ in rows if keep(name))
  is_prompt = lambda name: name == model.prompt_path
  for name, shape, axes in rows:
    print(f'{name:60s} {str(shape):18s} ({axes})')
  prompt, frozen = count(is_prompt), count(lambda name: not is_prompt(name))
  print(f'\nfrozen parameters: {frozen:,}\nprompt parameters: {prompt:,} '
        f'({100 * prompt / (prompt + frozen):.4f}% of all)')


if __name__ == '__main__':
  gin_config.run(main)
