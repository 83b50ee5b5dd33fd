"""A seqio vocabulary of a Hugging Face directory's `tokenizer.json` (the `tokenizers`
package), so seqio tasks of a Llama, Gemma, Qwen2 or GPT-2 model tokenise as it does.

    inputs = hf_vocabulary.HfVocabulary('/models/Llama-3.2-1B', add_bos=True)
    targets = hf_vocabulary.HfVocabulary('/models/Llama-3.2-1B')
    output_features = {'inputs': seqio.Feature(inputs, add_eos=False),
                       'targets': seqio.Feature(targets, add_eos=True)}

Ids are the tokenizer's own, so id 0 is a real token ('!' for GPT-2, Llama 3 and Qwen2;
`<pad>` for Gemma). seqio pads with 0 and the decoder-only model reads a row's trailing
zeros as padding (t5x and seqio have the same convention): a text whose last token is id 0
loses it. `add_bos` adds the tokenizer's own start tokens (its post-processor: BOS for
Llama and Gemma, nothing for GPT-2 and Qwen2); the inputs want them, the targets (which
follow the inputs) do not. EOS is `eos_token_id` of the directory's `config.json` (the first
one if it lists several), which must be the model's `eos_id` (gin: `build_model.eos_id`).
"""

import json
import os
from typing import Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

TOKENIZER = 'tokenizer.json'


def is_hf_directory(path: str) -> bool:
  """Whether `path` is a directory holding a Hugging Face `tokenizer.json`."""
  return os.path.isfile(os.path.join(path, TOKENIZER))


class HfVocabulary(seqio.Vocabulary):
  """The tokenizer of a Hugging Face model directory (`tokenizer.json` + `config.json`)."""

  def __init__(self, directory: str, add_bos: bool = False):
    if not is_hf_directory(directory):
      raise ValueError(f'{directory} has no {TOKENIZER}; give the Hugging Face model directory '
                       '(or a SentencePiece .model file for T5).')
    with open(os.path.join(directory, 'config.json')) as f:
      eos = json.load(f).get('eos_token_id')
    self._eos_id = eos[0] if isinstance(eos, list) else eos
    if not self._eos_id:
      raise ValueError(f'{directory}/config.json has eos_token_id {eos!r}; seqio needs an EOS '
                       '> 0 (0 is padding): set it to the model\'s end-of-text id.')
    self.directory = directory
    self.add_bos = add_bos
    self.tokenizer = tokenizers.Tokenizer.from_file(os.path.join(directory, TOKENIZER))
    super().__init__(extra_ids=0)

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, add_special_tokens=self.add_bos).ids

  def _decode(self, ids: Sequence[int]) -> str:
    """Text of `ids` (through EOS, as seqio cuts them), without special tokens or padding."""
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A scalar string -> [N] int32 ids."""
    encode = lambda text: np.array(self._encode(np.asarray(text).item().decode()), np.int32)
    ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """[N] ids -> a scalar string."""
    text = tf.numpy_function(lambda row: self._decode(row.tolist()).encode(), [ids], tf.string,
                             stateful=False)
    text.set_shape([])
    return text

  def __eq__(self, other) -> bool:
    return (isinstance(other, HfVocabulary) and other.directory == self.directory and
            other.add_bos == self.add_bos)

  def __hash__(self) -> int:
    return hash((self.directory, self.add_bos))
