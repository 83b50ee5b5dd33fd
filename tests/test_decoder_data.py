"""What decoder-only runs read: rows built by the model equal seqio's converters, a Hugging
Face tokenizer as a seqio vocabulary (BOS on the inputs, the model's EOS), and frozen
weights of another size refused in one line."""

import json

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import models as tokenizer_models
from tokenizers import pre_tokenizers
from tokenizers import processors

import cli
import tiny_task  # pylint: disable=unused-import  # Registers `tiny_sentiment`.
from prompt_tuning import gin_config
from prompt_tuning import interpret
from prompt_tuning.formats import hf_decoder
from prompt_tuning.formats import hf_vocabulary
from prompt_tuning.formats import initial_checkpoint
from prompt_tuning.model import decoder_models
from prompt_tuning.model import decoder_network
from prompt_tuning.model import initializers
from prompt_tuning.model import models
from prompt_tuning.training import data
from tasks import user_task

LENGTHS = {'inputs': 16, 'targets': 4}
WORDS = ['!', '<s>', '</s>', 'good', 'film', 'positive', 'negative', 'the']  # Id 0 is '!'.


@pytest.mark.parametrize('model', [models.EncoderDecoderModel, decoder_models.DecoderOnlyModel])
def test_make_rows_equal_the_feature_converter(model):
  dataset = seqio.get_mixture_or_task('tiny_sentiment').get_dataset(
      LENGTHS, 'validation', shuffle=False)
  examples = list(dataset.take(3).as_numpy_iterator())
  converted = model.feature_converter()(dataset.take(3), LENGTHS).batch(3)
  want = next(converted.as_numpy_iterator())
  got = model.make_rows([e['inputs'] for e in examples], [e['targets'] for e in examples],
                        LENGTHS)
  assert set(got) == set(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def _write_tokenizer(directory):
  """A word-level `tokenizer.json` of `WORDS` whose post-processor adds BOS."""
  tokenizer = tokenizers.Tokenizer(tokenizer_models.WordLevel(
      {word: i for i, word in enumerate(WORDS)}, unk_token='!'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens(['<s>', '</s>'])
  tokenizer.post_processor = processors.TemplateProcessing(
      single='<s> $A', special_tokens=[('<s>', 1)])
  tokenizer.save(str(directory / 'tokenizer.json'))


def _tokenizer_directory(tmp_path, eos=2):
  """A Hugging Face directory of `_write_tokenizer`'s tokenizer."""
  _write_tokenizer(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'llama',
                                                    'eos_token_id': [eos, 7]}))
  return str(tmp_path)


def test_hf_tokenizer_is_a_seqio_vocabulary(tmp_path):
  directory = _tokenizer_directory(tmp_path)
  inputs = hf_vocabulary.HfVocabulary(directory, add_bos=True)
  targets = hf_vocabulary.HfVocabulary(directory)
  assert (inputs.encode('the good film'), targets.encode('positive')) == ([1, 7, 3, 4], [5])
  assert targets.eos_id == 2 and targets.vocab_size == len(WORDS)
  assert targets.decode([5, 2, 6, 0, 0]) == 'positive'  # Up to EOS, special tokens dropped.
  np.testing.assert_array_equal(inputs.encode_tf(tf.constant('good film')),
                                [1, 3, 4])
  with pytest.raises(ValueError, match=r'eos_token_id \[0, 7\]; seqio needs an EOS > 0'):
    hf_vocabulary.HfVocabulary(_tokenizer_directory(tmp_path, eos=0))


def test_a_user_task_reads_a_hugging_face_directory(tmp_path):
  directory = _tokenizer_directory(tmp_path)
  for split in ('train', 'validation'):
    (tmp_path / f'{split}.jsonl').write_text(
        '\n'.join(json.dumps({'text': t, 'label': l}) for t, l in
                  (('the good film', 'positive'), ('the film', 'negative'))))
  user_task.register_file_task('hf_words', str(tmp_path / 'train.jsonl'),
                               str(tmp_path / 'validation.jsonl'), 'text', 'label', directory)
  example = next(seqio.get_mixture_or_task('hf_words').get_dataset(
      LENGTHS, 'validation', shuffle=False).as_numpy_iterator())
  np.testing.assert_array_equal(example['inputs'], [1, 7, 3, 4])  # BOS, no EOS.
  np.testing.assert_array_equal(example['targets'], [5, 2])  # The model's EOS.
  data.check_eos('hf_words', 2)
  with pytest.raises(ValueError, match=r"hf_words's targets end with EOS 2 but the model stops "
                     r'at eos_id=1; set --gin.models.build_model.eos_id=2'):
    data.check_eos('hf_words', 1)


def test_decoder_weights_of_another_size_are_one_line(tmp_path):
  gin_config.parse(['models/decoder_tiny.gin'], [])
  try:
    model = models.build_model()
    shapes = model.batch_shapes(LENGTHS, 1)
    params = model.init(jax.random.PRNGKey(0), shapes)
    config = model.module.config
    bigger = decoder_models.DecoderOnlyModel(model.module.clone(
        config=type(config)(**{**config.__dict__, 'num_layers': 3})))
  finally:
    gin.clear_config()
  hf_decoder.save_hf_directory(params, config, str(tmp_path), eos_id=1)
  abstract = jax.eval_shape(bigger.init, jax.random.PRNGKey(0), shapes)
  with pytest.raises(ValueError, match=r'another model than the gin model: num_layers 2 '
                     r'\(checkpoint\) vs 3 \(gin model\)'):
    initial_checkpoint.load_params(str(tmp_path), abstract)


def test_gemma_prompts_start_from_embeddings_as_the_network_scales_them():
  config = decoder_network.DecoderConfig(vocab_size=64, emb_dim=16, num_heads=2, num_kv_heads=1,
                                         head_dim=8, mlp_dim=32, num_layers=1,
                                         scale_embeddings=True, dtype='float32')
  model = decoder_models.DecoderOnlyModel(decoder_network.DecoderOnlyTransformer(
      config, 3, initializers.sampled_vocab(population_size=64)))
  embedding = model.init(jax.random.PRNGKey(0), model.batch_shapes(LENGTHS, 1))[
      'token_embedder']['embedding']
  prompt = np.asarray(model.initial_prompt(jax.random.PRNGKey(1), embedding))
  scaled = np.asarray(embedding) * 4.0  # sqrt(16)
  assert all(np.isclose(scaled, row).all(axis=1).any() for row in prompt)


def test_a_text_prompt_starts_from_the_hugging_face_tokens_of_its_text(tmp_path):
  gin_config.parse(['models/decoder_tiny.gin', 'prompts/text.gin'], [
      'PROMPT_LENGTH = 5', "PROMPT_TEXT = 'the good film'",
      f"VOCABULARY_PATH = '{_tokenizer_directory(tmp_path)}'", "MIXTURE_OR_TASK_NAME = 'unused'",
      'MIXTURE_OR_TASK_MODULE = []'])
  try:
    model = models.build_model()
  finally:
    gin.clear_config()
  embedding = model.init(jax.random.PRNGKey(0), model.batch_shapes(LENGTHS, 1))[
      'token_embedder']['embedding']
  prompt = model.initial_prompt(jax.random.PRNGKey(1), embedding)
  np.testing.assert_array_equal(prompt, np.asarray(embedding)[[7, 3, 4, 7, 3]])  # No BOS.


def test_interpret_names_a_prompt_in_a_hugging_face_vocabulary(tmp_path):
  """A prompt made of the rows of 'good', 'positive' and 'negative' is read back as those
  words; special tokens are never named, while id 0 ('!') is a word."""
  bindings = ['decoder_network.DecoderConfig.vocab_size = 8']
  gin_config.parse(['models/decoder_tiny.gin'], bindings)
  try:
    model = models.build_model()
  finally:
    gin.clear_config()
  params = model.init(jax.random.PRNGKey(0), model.batch_shapes(LENGTHS, 1))
  directory = tmp_path / 'llama'
  hf_decoder.save_hf_directory(params, model.module.config, str(directory), eos_id=2)
  _write_tokenizer(directory)
  vocabulary = hf_vocabulary.HfVocabulary(str(directory))
  assert interpret.excluded_ids(vocabulary, 10) == [1, 2, 8, 9]
  assert [interpret.piece(vocabulary, i) for i in (0, 5)] == ['!', 'positive']
  embedding = np.asarray(params['token_embedder']['embedding'])
  np.save(tmp_path / 'prompt.npy', embedding[[3, 5, 6]])
  result = cli.run_main_in_process(interpret.main, [
      '--gin_file=models/decoder_tiny.gin', f'--gin.{bindings[0].replace(" ", "")}',
      f'--prompt={tmp_path / "prompt.npy"}', f'--checkpoint={directory}',
      f'--vocabulary={directory}', '--labels=positive,negative', '--top_k=6'])
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [line for line in result.stdout.splitlines() if ' 1.000' in line]
  assert [row.split()[1:3] for row in rows] == [['good', '1.000'], ['positive*', '1.000'],
                                               ['negative*', '1.000']], result.stdout
  assert all('<s>' not in row and '!' in row for row in rows)  # All 6 words in each row.

