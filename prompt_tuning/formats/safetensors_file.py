"""Reads and writes `.safetensors` files with numpy alone (bfloat16 included).

The format: an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`
(padded with spaces to a multiple of 8), then the tensors' raw little-endian bytes, offsets
counted from the end of the header. Reading memory-maps the file, so a tensor's bytes are
read only when (and as far as) they are used; every offset is checked against the file
size first, so a truncated file is an error before anything is read.
"""

import json
import os
import struct
from typing import Mapping, Optional

import ml_dtypes
import numpy as np

_DTYPES = {
    'BOOL': np.bool_, 'U8': np.uint8, 'I8': np.int8, 'U16': np.uint16, 'I16': np.int16,
    'U32': np.uint32, 'I32': np.int32, 'U64': np.uint64, 'I64': np.int64, 'F16': np.float16,
    'F32': np.float32, 'F64': np.float64, 'BF16': ml_dtypes.bfloat16,
    'F8_E4M3': ml_dtypes.float8_e4m3fn, 'F8_E5M2': ml_dtypes.float8_e5m2,
}
_NAMES = {np.dtype(dtype): name for name, dtype in _DTYPES.items()}


def _corrupt(path: str, why: str) -> ValueError:
  return ValueError(f'{path} is not a complete safetensors file ({why}); download or write it '
                    'again.')


def read(path: str) -> dict[str, np.ndarray]:
  """All tensors of a file, as read-only arrays memory-mapped from it."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise _corrupt(path, f'{size} bytes, shorter than the header length')
    (length,) = struct.unpack('<Q', head)
    if 8 + length > size:
      raise _corrupt(path, f'a {length}-byte header in a {size}-byte file: truncated')
    try:
      header = json.loads(f.read(length))
    except ValueError as e:
      raise _corrupt(path, f'unreadable header: {e}') from None
  header.pop('__metadata__', None)
  start = 8 + length
  end = max((entry['data_offsets'][1] for entry in header.values()), default=0)
  if start + end > size:
    raise _corrupt(path, f'the header describes {end} bytes of tensors but {size - start} '
                   'follow it: truncated')
  data = np.zeros(0, np.uint8)  # np.memmap refuses an empty range.
  if end:
    data = np.memmap(path, np.uint8, 'r', offset=start, shape=(end,))
  tensors = {}
  for name, entry in header.items():
    if entry['dtype'] not in _DTYPES:
      raise ValueError(f'{path}: tensor {name} has dtype {entry["dtype"]}, which this reader does '
                       f'not know; supported: {", ".join(_DTYPES)}.')
    dtype = np.dtype(_DTYPES[entry['dtype']])
    begin, stop = entry['data_offsets']
    if stop - begin != dtype.itemsize * int(np.prod(entry['shape'])):
      raise _corrupt(path, f'tensor {name} has {stop - begin} bytes for shape {entry["shape"]}')
    tensors[name] = data[begin:stop].view(dtype).reshape(entry['shape'])
  return tensors


def write(path: str, tensors: Mapping[str, np.ndarray],
          metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes `tensors` (a temporary file renamed when complete, so no reader sees half a file).

  Transformers and PEFT load files whose `metadata` is `{'format': 'pt'}`.
  """
  header: dict = {'__metadata__': dict(metadata)} if metadata else {}
  arrays = {name: np.ascontiguousarray(value) for name, value in sorted(tensors.items())}
  offset = 0
  for name, array in arrays.items():
    if array.dtype not in _NAMES:
      raise ValueError(f'cannot write tensor {name} of dtype {array.dtype} as safetensors; cast '
                       f'it to one of {sorted(str(d) for d in _NAMES)}.')
    header[name] = {'dtype': _NAMES[array.dtype], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + array.nbytes]}
    offset += array.nbytes
  encoded = json.dumps(header, separators=(',', ':')).encode()
  encoded += b' ' * (-len(encoded) % 8)
  partial = f'{path}.partial'
  with open(partial, 'wb') as f:
    f.write(struct.pack('<Q', len(encoded)) + encoded)
    for array in arrays.values():
      f.write(array.tobytes())
  os.replace(partial, path)
