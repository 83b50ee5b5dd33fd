"""The small pretrained T5 shipped with the package (see assets/demo/MODEL_CARD.md).

Its files are checked against `MANIFEST.json` (sha256 of each) before use, so a missing
or corrupted file is a clear error instead of a half-loaded model. The last step of
`recipes/pretrain_demo_model.sh` packages a pretraining run's params here:

    python -m prompt_tuning.demo_model --params=/tmp/demo_pretraining/prefix_lm/params
"""

import hashlib
import json
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets', 'demo')
VOCABULARY_PATH = os.path.join(ASSETS, 'spm.model')
PARAMS_PATH = os.path.join(ASSETS, 'params')
# Not named VOCABULARY_PATH: a gin constant `m.X` shadows every macro `X`, so that name
# would silently replace the VOCABULARY_PATH macro of every run that imports this module.
gin.constant('demo_model.DEMO_VOCABULARY_PATH', VOCABULARY_PATH)

_PARAMS = flags.DEFINE_string('params', None, 'A pretraining run\'s params/ to package.')


def _files(directory: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names
                if name not in ('MANIFEST.json', 'MODEL_CARD.md'))


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def write_manifest(directory: str = ASSETS) -> dict[str, str]:
  """Records the sha256 of every asset file."""
  manifest = {name: _sha256(os.path.join(directory, name)) for name in _files(directory)}
  with open(os.path.join(directory, 'MANIFEST.json'), 'w') as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  return manifest


@gin.configurable
def verified_params_path(directory: str = ASSETS) -> str:
  """The shipped params directory, after checking every file against the manifest."""
  manifest_path = os.path.join(directory, 'MANIFEST.json')
  if not os.path.isfile(manifest_path):
    raise FileNotFoundError(f'the demo model is missing {manifest_path}; reinstall the '
                            'package or rebuild it with recipes/pretrain_demo_model.sh.')
  with open(manifest_path) as f:
    manifest = json.load(f)
  for name, digest in sorted(manifest.items()):
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'the demo model file {path} is missing; reinstall the package '
                              'or rebuild it with recipes/pretrain_demo_model.sh.')
    if _sha256(path) != digest:
      raise ValueError(f'the demo model file {path} is corrupted (sha256 differs from '
                       'MANIFEST.json); reinstall the package or rebuild the model.')
  return os.path.join(directory, 'params')


def package(params_dir: str, directory: str = ASSETS) -> str:
  """Stores `params_dir` in bfloat16 as the shipped model, with its manifest; returns the
  fingerprint of the weights as the demo loads them (float32)."""
  from prompt_tuning.training import checkpoints  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.abspath(params_dir))
  stored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.bfloat16), params)
  shutil.rmtree(os.path.join(directory, 'params'), ignore_errors=True)
  checkpoints.save_params(os.path.join(directory, 'params'), stored)
  write_manifest(directory)
  return checkpoints.fingerprint(jax.tree.map(lambda x: x.astype(jnp.float32), stored))


def main(argv):
  del argv
  fingerprint = package(_PARAMS.value)
  size = sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(ASSETS) for name in names)
  print(f'packaged {_PARAMS.value} into {ASSETS} ({size / 1e6:.1f} MB); '
        f'fingerprint of the loaded weights: {fingerprint}')


if __name__ == '__main__':
  app.run(main)
