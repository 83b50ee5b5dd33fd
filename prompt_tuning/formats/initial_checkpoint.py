"""INITIAL_CHECKPOINT_PATH: frozen weights from our format, T5X or Hugging Face, told apart
by what is at the path.

| kind | recognised by | read by |
|---|---|---|
| Hugging Face | `config.json` | `hf_decoder` or `hf_checkpoint` (T5), by its `model_type` |
| T5X, Orbax | an Orbax item `state/` (or the path is that item, holding `target`) | Orbax |
| T5X, legacy | a `checkpoint` msgpack file | `t5x_checkpoint`, zarr through tensorstore |
| ours | an Orbax params tree (`_METADATA`), e.g. `MODEL_DIR/params` | `checkpoints.load_params` |

Every kind is checked against the gin model's shapes before any weight is read; a
checkpoint of another size is one error naming each dimension that differs (read off the
shapes). A Hugging Face directory whose `model_type` is one of `hf_decoder.MODEL_TYPES`
(Llama, Gemma, Qwen2, GPT-2) is a decoder-only model; safetensors files are memory-mapped.
Then each device's shard is read from the files as it is placed, so the host
holds one array at a time. Unscanned checkpoints (`layers_0`, ...) also load into a
`scan_layers` model (a T5X Orbax one by reading its parameters into host memory first).
"""

import json
import os
import posixpath
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from prompt_tuning.formats import hf_checkpoint
from prompt_tuning.formats import hf_decoder
from prompt_tuning.formats import t5x_checkpoint
from prompt_tuning.training import checkpoints

Params = Any
KINDS = {'ours': 'our format', 't5x': 'a T5X checkpoint', 't5x_orbax': 'a T5X Orbax checkpoint',
         'hf': 'a Hugging Face directory'}


def _exists(path: str) -> bool:
  if path.startswith('gs://'):
    return t5x_checkpoint.read_file(path) is not None
  return os.path.exists(path)


def checkpoint_kind(path: str) -> tuple[str, str]:
  """(kind, the directory to read): kind is one of `KINDS`; a clear error for anything else."""
  path = str(checkpoints.as_path(path))  # Orbax reads absolute paths only.
  has = lambda name: _exists(posixpath.join(path, name))
  orbax_markers = ('_METADATA', '_CHECKPOINT_METADATA', 'checkpoint')
  if has(hf_checkpoint.CONFIG):
    if path.startswith('gs://'):
      raise ValueError(f'INITIAL_CHECKPOINT_PATH {path}: copy Hugging Face directories to a local '
                       'disk first (they are memory-mapped).')
    return 'hf', path
  if any(has(f'state/{marker}') for marker in orbax_markers):
    return 't5x_orbax', posixpath.join(path, 'state')
  if has('_METADATA'):
    return ('t5x_orbax' if 'target' in t5x_checkpoint.orbax_tree(path) else 'ours'), path
  if has('checkpoint'):
    return 't5x', path
  if not path.startswith('gs://') and not os.path.isdir(path):
    raise FileNotFoundError(f'INITIAL_CHECKPOINT_PATH {path} does not exist.')
  raise ValueError(
      f'INITIAL_CHECKPOINT_PATH {path} is no checkpoint this library reads: expected our format '
      '(an Orbax directory with _METADATA, e.g. MODEL_DIR/params), a T5X checkpoint_<step> '
      'directory (a `checkpoint` msgpack file or an Orbax `state/`), or a Hugging Face directory '
      '(config.json + model.safetensors or pytorch_model.bin).')


def _per_layer(path: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
  """A scanned `encoder/layers/x` [N, ...] -> its N unscanned `encoder/layers_i/x` [...]."""
  stack, *rest = path.split('/')
  if rest[:1] != ['layers']:
    return [(path, shape)]
  return [('/'.join([stack, f'layers_{i}', *rest[1:]]), shape[1:]) for i in range(shape[0])]


def dimensions(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
  """The architecture read off unscanned parameter shapes (`T5Config` field names)."""
  count = lambda stack: len({p.split('/')[1] for p in shapes if p.startswith(f'{stack}/layers_')})
  vocab, embed = shapes['token_embedder/embedding']
  heads, buckets = shapes['encoder/relpos_bias/rel_embedding']
  gated = 'encoder/layers_0/mlp/wi_0/kernel' in shapes
  return {
      'vocab_size': vocab, 'emb_dim': embed, 'num_heads': heads,
      'head_dim': shapes['encoder/layers_0/attention/query/kernel'][1] // heads,
      'mlp_dim': shapes[f'encoder/layers_0/mlp/{"wi_0" if gated else "wi"}/kernel'][1],
      'num_encoder_layers': count('encoder'), 'num_decoder_layers': count('decoder'),
      'relpos_buckets': buckets, 'len(mlp_activations)': 2 if gated else 1,
      'logits_via_embedding': 'decoder/logits_dense/kernel' not in shapes,
  }


def decoder_dimensions(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
  """A decoder-only architecture read off unscanned parameter shapes (`DecoderConfig` names)."""
  vocab, embed = shapes['token_embedder/embedding']
  layer = 'decoder/layers_0'
  mlp = shapes.get(f'{layer}/mlp/wi_0/kernel') or shapes[f'{layer}/mlp/wi/kernel']
  return {
      'vocab_size': vocab, 'emb_dim': embed,
      'num_layers': len({p.split('/')[1] for p in shapes if p.startswith('decoder/layers_')}),
      'num_heads * head_dim': shapes[f'{layer}/self_attention/query/kernel'][1],
      'num_kv_heads * head_dim': shapes[f'{layer}/self_attention/key/kernel'][1],
      'mlp_dim': mlp[1], 'tie_embeddings': 'decoder/logits_dense/kernel' not in shapes,
  }


def check_shapes(shapes: Mapping[str, tuple[int, ...]], abstract: Params, where: str) -> None:
  """Raises unless the checkpoint's `/`-joined unscanned `shapes` hold every parameter of
  `abstract` (the gin model's, possibly scanned) with its shape."""
  want = dict(pair for path, leaf in traverse_util.flatten_dict(abstract, sep='/').items()
              for pair in _per_layer(path, tuple(leaf.shape)))
  wrong = [path for path, shape in want.items() if shapes.get(path) != shape]
  if not wrong:
    return
  decoder_only = not any(path.startswith('encoder/') for path in want)
  read, kind = (decoder_dimensions, 'decoder-only') if decoder_only else (dimensions, 'T5')
  try:
    theirs, ours = read(shapes), read(want)
  except KeyError as e:
    raise ValueError(f'{where} holds no {kind} parameter {e}; is it a {kind} checkpoint?'
                     ) from None
  differ = [f'{name} {theirs[name]} (checkpoint) vs {ours[name]} (gin model)'
            for name in ours if theirs[name] != ours[name]]
  if differ:
    raise ValueError(f'{where} is another model than the gin model: {"; ".join(differ)}; use the '
                     'model gin file of that checkpoint.')
  raise ValueError(f'{where}: {wrong[0]} is {shapes.get(wrong[0])} but the gin model needs '
                   f'{want[wrong[0]]}; use the model gin file of that checkpoint.')


class _Stacked:
  """Unscanned per-layer sources `[...]` seen as one scanned source `[N, ...]`."""

  def __init__(self, layers: list[Any]):
    self.layers = layers
    self.shape = (len(layers), *layers[0].shape)

  def __getitem__(self, index):
    chosen = range(len(self.layers))[index[0]]
    return np.stack([np.asarray(self.layers[i][index[1:]]) for i in chosen])


def _placed(source: Any, want: jax.ShapeDtypeStruct) -> jax.Array:
  """`source[index]` (numpy, memory map or TensorStore) read once per distinct shard, cast to
  `want.dtype` and placed in `want.sharding`."""
  shards = {}

  def shard(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in shards:
      shards[key] = np.asarray(source[index]).astype(want.dtype)
    return shards[key]

  return jax.make_array_from_callback(want.shape, want.sharding, shard)


def place(sources: Mapping[str, Any], abstract: Params) -> Params:
  """Reads the unscanned `/`-joined `sources` into the leaves of `abstract`."""
  placed = {}
  for path, want in traverse_util.flatten_dict(abstract, sep='/').items():
    names = [name for name, _ in _per_layer(path, tuple(want.shape))]
    source = sources[path] if names == [path] else _Stacked([sources[name] for name in names])
    placed[path] = _placed(source, want)
  return traverse_util.unflatten_dict(placed, sep='/')


def load_params(path: str, abstract: Params) -> Params:
  """The frozen weights at `path` (any of `KINDS`), read into `abstract`: a params tree of
  `jax.ShapeDtypeStruct`s with shardings (the gin model's, without the prompt)."""
  kind, directory = checkpoint_kind(path)
  where = f'INITIAL_CHECKPOINT_PATH {path} ({KINDS[kind]})'
  if kind == 'ours':
    return checkpoints.load_params(directory, abstract)
  if kind == 't5x_orbax':
    check_shapes(t5x_checkpoint.orbax_shapes(directory), abstract, where)
    scanned = any('/layers/' in p for p in traverse_util.flatten_dict(abstract, sep='/'))
    if not scanned:
      return t5x_checkpoint.restore_orbax(directory, abstract=abstract)
    sources = traverse_util.flatten_dict(t5x_checkpoint.restore_orbax(directory), sep='/')
  elif kind == 't5x':
    sources = t5x_checkpoint.read_legacy(directory)
  else:
    with open(os.path.join(directory, hf_checkpoint.CONFIG)) as f:
      decoder_only = json.load(f).get('model_type') in hf_decoder.MODEL_TYPES
    reader = hf_decoder if decoder_only else hf_checkpoint
    sources = traverse_util.flatten_dict(reader.load_params(directory)[0], sep='/')
  check_shapes({name: tuple(source.shape) for name, source in sources.items()}, abstract, where)
  return place(sources, abstract)
