"""What the paper's tasks share: TFDS sources, the T5 vocabulary, registration.

Set the SentencePiece model with the environment variable `T5_VOCABULARY_PATH` (default: T5's
public `gs://t5-data/vocabs/cc_all.32000/sentencepiece.model`, 32000 pieces + 100 extra ids)
and the TFDS data directory with `TFDS_DATA_DIR` (TFDS's own default otherwise), both before
the task module is imported; the `--tfds_data_dir` flag (seqio's data directory override)
takes precedence over `TFDS_DATA_DIR`. Registration reads no data; datasets are never
downloaded.
"""

import os
from typing import Callable, Optional, Sequence

import seqio
import tensorflow_datasets as tfds

from prompt_tuning.inference import labels

DEFAULT_VOCABULARY_PATH = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
TASKLESS_SUFFIX = '_taskless'


class MissingTfdsDataError(FileNotFoundError):
  """The TFDS dataset has not been prepared in the data directory."""


class PreparedTfdsSource(seqio.TfdsDataSource):
  """A TFDS source that reads prepared data only: missing data is a one-line error."""

  def __init__(self, tfds_name: str, splits: Sequence[str]):
    self._data_dir = os.environ.get('TFDS_DATA_DIR') or None
    super().__init__(tfds_name=tfds_name, tfds_data_dir=self._data_dir, splits=list(splits),
                     read_only=True)

  def get_dataset(self, split=None, shuffle=True, seed=None, shard_info=None, **kwargs):
    try:
      return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)
    except (AssertionError, FileNotFoundError, tfds.core.DatasetNotFoundError):
      # The directory TFDS was given: seqio's override (--tfds_data_dir), TFDS_DATA_DIR, or
      # TFDS's default.
      directory = self.tfds_dataset.data_dir or tfds.core.constants.DATA_DIR
      raise MissingTfdsDataError(
          f'TFDS dataset {self.tfds_dataset.name} not found in {directory}; download/prepare '
          'it and pass --tfds_data_dir=DIR (or set TFDS_DATA_DIR).') from None

  def num_input_examples(self, split: str):
    """The split's size, or None where TFDS has no split metadata (mock data in tests)."""
    try:
      return super().num_input_examples(split)
    except KeyError:
      return None


def vocabulary() -> seqio.SentencePieceVocabulary:
  """The T5 vocabulary named by `T5_VOCABULARY_PATH` (loaded lazily, on first use)."""
  path = os.environ.get('T5_VOCABULARY_PATH', DEFAULT_VOCABULARY_PATH)
  return seqio.SentencePieceVocabulary(path, extra_ids=100)


def add_task(name: str, tfds_name: str, splits: Sequence[str], text_preprocessor: Callable,
             postprocess_fn: Optional[Callable], metric_fns: Sequence[Callable],
             label_words: Optional[Sequence[str]] = None) -> None:
  """Registers `name` on the prepared TFDS dataset `tfds_name` (see `add_text_task`)."""
  add_text_task(name, PreparedTfdsSource(tfds_name, splits), text_preprocessor,
                postprocess_fn, metric_fns, label_words)


def add_text_task(name: str, source: seqio.DataSource, text_preprocessor: Callable,
                  postprocess_fn: Optional[Callable], metric_fns: Sequence[Callable],
                  label_words: Optional[Sequence[str]] = None) -> None:
  """Registers `name`: `source` examples -> `text_preprocessor` -> T5 tokens with EOS. With
  `label_words` it is a classification task (rank classification, class-label prompts)."""
  features = {key: seqio.Feature(vocabulary(), add_eos=True) for key in ('inputs', 'targets')}
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=[text_preprocessor, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=features, postprocess_fn=postprocess_fn, metric_fns=list(metric_fns))
  if label_words:
    labels.register_labels(name, label_words)
