"""Reads the parameters of T5X checkpoints (e.g. `t5_1_1_lm100k_base/checkpoint_1100000`).

Two layouts, both `checkpoint_<step>/` directories, local or on `gs://` (tensorstore's GCS
driver; Orbax reads `gs://` itself):

- **Legacy.** A file `checkpoint`: flax msgpack (`flax.serialization`) of
  `{'version': 3, 'optimizer': {'target': params, 'state': {'step', 'param_states': slots}}}`.
  Each leaf is either the array itself (flax's msgpack extension type for ndarrays; T5X
  keeps small arrays inline) or the TensorStore spec of a zarr array written beside the
  file, as a dict: `{'driver': 'zarr', 'dtype': 'float32', 'kvstore': {'driver': 'file',
  'path': 'target.encoder.layers_0.attention.query.kernel'}, 'metadata': {'chunks': ...,
  'compressor': {'id': 'gzip'}, 'shape': ...}}`. The path is relative to the checkpoint
  directory (T5X rewrites it to an absolute one when it reads); the kvstore driver is
  `file`, `gfile` (Google's file system, read here as a local file) or `gcs` (written with a
  placeholder bucket: the bucket of the checkpoint's own URL is used). Specs from
  tensorstore < 0.1.14 carry the path beside `kvstore` instead of inside it.
- **Orbax.** The train state is an Orbax PyTree item `state/` with the same tree
  (`target/...`, `state/param_states/...`).

Only `target` is read (optimiser slots are never opened). T5X's parameter names equal
ours (`encoder/layers_0/attention/query/kernel`, `token_embedder/embedding`, ...). Zarr
arrays are opened here and read later, shard by shard, by whoever indexes them.
"""

import os
import posixpath
import re
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import serialization
from flax import traverse_util

Params = Any
_KVSTORE_DRIVERS = ('file', 'gfile', 'gcs')


def kvstore(path: str) -> dict[str, str]:
  """The tensorstore kvstore spec of a local path or a `gs://bucket/path` URL."""
  match = re.fullmatch(r'gs://([^/]+)/?(.*)', path)
  if match:
    return {'driver': 'gcs', 'bucket': match[1], 'path': match[2]}
  return {'driver': 'file', 'path': os.path.abspath(path)}


def read_file(path: str) -> Optional[bytes]:
  """The bytes of a local or `gs://` file; None if there is no such file."""
  directory, name = posixpath.split(path)
  spec = kvstore(directory)
  spec['path'] = spec['path'].rstrip('/') + '/' if spec['path'] else ''  # A key prefix.
  result = ts.KvStore.open(spec).result().read(name).result()
  return result.value if result.state == 'value' else None


def _is_spec(value: Any) -> bool:
  return isinstance(value, dict) and 'driver' in value and 'kvstore' in value


def absolute_spec(spec: dict, directory: str) -> dict:
  """A leaf's stored spec with its relative path resolved against the checkpoint directory."""
  store = spec['kvstore']
  parts = [part for part in (store.get('path'), spec.get('path')) if part]
  if store.get('driver') not in _KVSTORE_DRIVERS or not parts:
    raise ValueError(f'T5X checkpoint {directory}: cannot read the array spec with kvstore '
                     f'{store}; this reader takes the zarr arrays T5X writes (a relative path, '
                     f'kvstore driver one of {_KVSTORE_DRIVERS}).')
  relative = posixpath.join(*parts)
  return {'driver': spec['driver'], 'kvstore': kvstore(posixpath.join(directory, relative))}


def read_legacy(directory: str) -> dict[str, Any]:
  """`/`-joined target paths -> numpy arrays (inline leaves) or opened zarr TensorStores."""
  where = f'T5X checkpoint {directory}'
  raw = read_file(posixpath.join(directory, 'checkpoint'))
  if raw is None:
    raise FileNotFoundError(f'{where} has no `checkpoint` file.')
  try:
    contents = serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several types for damaged files.
    raise ValueError(f'{where}: `checkpoint` is not flax msgpack ({e}); copy it again.') from None
  target = contents.get('optimizer', {}).get('target') if isinstance(contents, dict) else None
  if not isinstance(target, dict):
    raise ValueError(f'{where}: `checkpoint` holds no optimizer/target tree, so it is not a T5X '
                     'train-state checkpoint.')
  flat = {path: value for path, value in traverse_util.flatten_dict(
      target, sep='/', is_leaf=lambda _, value: _is_spec(value)).items() if value is not None}
  opening = {path: ts.open(absolute_spec(value, directory), read=True)
             for path, value in flat.items() if _is_spec(value)}
  leaves = {}
  for path, value in flat.items():
    try:
      leaves[path] = opening[path].result() if path in opening else np.asarray(value)
    except ValueError as e:
      raise ValueError(f'{where}: cannot open the zarr array of {path} ({e}); the checkpoint '
                       'folder is incomplete.') from None
  return leaves


def orbax_tree(item: str) -> dict:
  """The metadata tree (`target`, `state`) of an Orbax PyTree item."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    return dict(checkpointer.metadata(item).item_metadata.tree)


def orbax_shapes(item: str) -> dict[str, tuple[int, ...]]:
  """`/`-joined target paths -> shapes, from the metadata alone."""
  target = traverse_util.flatten_dict(dict(orbax_tree(item)['target']), sep='/')
  return {path: tuple(leaf.shape) for path, leaf in target.items()}


def restore_orbax(item: str, key: str = 'target',
                  abstract: Optional[Params] = None) -> Params:
  """The subtree `key` of an Orbax PyTree item (T5X: `target`; our run checkpoints:
  `trainable`): the leaves of `abstract` (ShapeDtypeStructs with shardings) read straight
  into their shardings and dtypes, or without `abstract` every leaf as a numpy array."""
  if abstract is None:
    abstract = orbax_tree(item)[key]
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  else:
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(item, args=ocp.args.PyTreeRestore(
        item={key: abstract}, restore_args={key: restore_args}, partial_restore=True))[key]
