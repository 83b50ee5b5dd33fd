"""The prompt interpreter (the paper's §7): nearest tokens, class-label counts and movement as
pure functions, then the command line on the shipped demo model."""

import gin
import numpy as np
import pytest
import seqio

import cli
from test_bad_input import assert_one_clear_line
from prompt_tuning import demo_model
from prompt_tuning import gin_config
from prompt_tuning import interpret
from prompt_tuning.formats import prompt_formats
from prompt_tuning.model import initializers

TABLE = np.random.RandomState(0).normal(size=(128, 16)).astype(np.float32)  # [V, E]
EXCLUDED = [0, 1, *range(100, 128)]  # Padding, EOS, sentinels and padding rows.
DEMO_WORDS = {'▁positive': 20, '▁negative': 21, '▁movie': 35, '▁the': 4}  # Demo vocabulary.


def noisy(rows: np.ndarray, seed: int = 1) -> np.ndarray:
  return rows + 0.01 * np.random.RandomState(seed).normal(size=rows.shape).astype(np.float32)


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def test_a_prompt_made_of_embedding_rows_finds_those_tokens():
  ids, similarity = interpret.nearest_tokens(noisy(TABLE[[17, 42, 99]]), TABLE, 3, EXCLUDED)
  assert ids.shape == similarity.shape == (3, 3)
  assert ids[:, 0].tolist() == [17, 42, 99]
  np.testing.assert_allclose(similarity[:, 0], 1, atol=1e-3)
  assert (np.diff(similarity, axis=1) <= 0).all()  # Best first.


def test_excluded_ids_never_appear_even_as_the_prompt_itself():
  prompt = TABLE[[0, 1, 100, 127]]
  assert interpret.nearest_tokens(prompt, TABLE, 1)[0][:, 0].tolist() == [0, 1, 100, 127]
  ids, _ = interpret.nearest_tokens(prompt, TABLE, 20, EXCLUDED)
  assert not np.isin(ids, EXCLUDED).any()
  with pytest.raises(ValueError, match='between 1 and 98'):
    interpret.nearest_tokens(prompt, TABLE, 99, EXCLUDED)


def test_excluded_ids_of_the_demo_vocabulary():
  """Its 123 pieces hold <pad>, </s>, <unk>; seqio appends 100 `<extra_id_*>` pieces; the
  table has 256 rows."""
  with_sentinels = seqio.SentencePieceVocabulary(demo_model.VOCABULARY_PATH, extra_ids=100)
  assert with_sentinels.tokenizer.get_piece_size() == 223
  for vocabulary in (with_sentinels.tokenizer,
                     initializers.sentencepiece_vocabulary(demo_model.VOCABULARY_PATH)):
    assert interpret.excluded_ids(vocabulary, 256) == [0, 1, 2, *range(123, 256)]


def test_class_label_count_on_a_hand_built_case():
  # Two labels: one of token 10, one of tokens 11 and 12. Positions 0 and 1 sit on label
  # tokens (the second on the second piece of a label); 2 and 3 do not.
  label_ids = {10, 11, 12}
  ids, _ = interpret.nearest_tokens(noisy(TABLE[[10, 12, 50, 60]]), TABLE, 1, EXCLUDED)
  assert interpret.label_positions(ids, label_ids).tolist() == [True, True, False, False]
  neighbours = np.array([[5, 6, 12], [3, 4, 7], [11, 10, 8]])  # Any of the top k counts.
  assert interpret.label_positions(neighbours, label_ids).tolist() == [True, False, True]
  assert not interpret.label_positions(neighbours, set()).any()


def test_movement():
  cosine, distance = interpret.movement(TABLE[:4], TABLE[:4])
  np.testing.assert_allclose(cosine, 1, atol=1e-6)
  np.testing.assert_array_equal(distance, 0)
  trained, initial = np.array([[3., 4.], [0., 2.]]), np.array([[3., 0.], [0., 1.]])
  cosine, distance = interpret.movement(trained, initial)
  np.testing.assert_allclose(cosine, [9 / 15, 1], atol=1e-6)  # 3·3 / (5·3); same direction.
  np.testing.assert_allclose(distance, [4, 1], atol=1e-6)
  with pytest.raises(ValueError, match=r'has shape \(1, 2\) but the prompt has \(2, 2\)'):
    interpret.movement(trained, initial[:1])


DEMO_MODEL = ['--gin_file=models/demo_t5.gin',
              f'--checkpoint={demo_model.verified_params_path()}']


@pytest.fixture(scope='module')
def demo_prompt(tmp_path_factory):
  """(folder, the demo's embeddings [256, 128], initial prompt: their rows of DEMO_WORDS,
  trained prompt: those plus noise), the prompts saved in folder."""
  gin_config.parse(['models/demo_t5.gin'])
  embeddings = interpret.embedding_table(demo_model.verified_params_path(), 128)
  folder = tmp_path_factory.mktemp('prompt')
  initial = embeddings[list(DEMO_WORDS.values())]
  np.save(folder / 'initial.npy', initial)
  np.save(folder / 'prompt.npy', noisy(initial))
  return folder, embeddings, initial, noisy(initial)


def first_pieces(stdout: str) -> list[str]:
  """The top-1 piece of each position's line of the table, without the label mark."""
  rows = [line.split() for line in stdout.splitlines() if line.split()[0].isdigit()]
  return [row[1].rstrip('*') for row in rows]


def test_command_line_on_the_demo_model(demo_prompt):
  folder, embeddings, initial, trained = demo_prompt
  result = cli.run_main_in_process(interpret.main, [
      *DEMO_MODEL, f'--prompt={folder / "prompt.npy"}',
      f'--initial_prompt={folder / "initial.npy"}', f'--vocabulary={demo_model.VOCABULARY_PATH}',
      '--labels=negative,positive', '--top_k=3'])
  assert result.returncode == 0, result.stderr[-2000:]
  assert first_pieces(result.stdout) == list(DEMO_WORDS)
  assert '▁positive* 1.000' in result.stdout and '▁negative* 1.000' in result.stdout
  cosine, distance = interpret.movement(trained, initial)
  assert f'|  {cosine[0]:.3f}, {distance[0]:.3f}' in result.stdout
  excluded = interpret.excluded_ids(
      initializers.sentencepiece_vocabulary(demo_model.VOCABULARY_PATH), 256)
  neighbours, _ = interpret.nearest_tokens(trained, embeddings, 3, excluded)
  count = int(interpret.label_positions(neighbours, {20, 21}).sum())
  assert count >= 2
  assert f'with a class label among their top 3: {count} of 4' in result.stdout
  png = folder / 'interpret.png'  # Next to the prompt by default.
  assert f'wrote {png}' in result.stdout
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 1000


def test_a_peft_adapter_with_the_task_vocabulary_and_labels(demo_prompt, tmp_path):
  adapter = tmp_path / 'adapter'
  prompt_formats.save_peft(str(adapter), demo_prompt[3])
  result = cli.run_main_in_process(interpret.main, [
      *DEMO_MODEL, f'--prompt={adapter}', '--task=demo_sentiment', '--module=tasks.demo',
      f'--output_dir={tmp_path / "out"}'])
  assert result.returncode == 0, result.stderr[-2000:]
  assert first_pieces(result.stdout) == list(DEMO_WORDS)
  assert '(labels: negative, positive;' in result.stdout and 'moved' not in result.stdout
  assert (tmp_path / 'out' / 'interpret.png').stat().st_size > 1000


@pytest.mark.parametrize('name, flags, message', [
    ('another width',
     ['--prompt={folder}/narrow.npy', f'--vocabulary={demo_model.VOCABULARY_PATH}'],
     'the prompt is 64 wide but the gin model embeds in 128 (emb_dim)'),
    ('missing prompt', ['--prompt={folder}/missing.npy'],
     '--prompt {folder}/missing.npy is no MODEL_DIR (checkpoints/), .npy file or PEFT'),
    ('no vocabulary', ['--prompt={folder}/prompt.npy'], 'pass --vocabulary='),
])
def test_bad_input_is_one_line(demo_prompt, name, flags, message):
  del name
  folder = demo_prompt[0]
  np.save(folder / 'narrow.npy', np.zeros((3, 64), np.float32))
  result = cli.run_main_in_process(
      interpret.main, [*DEMO_MODEL, *[flag.format(folder=folder) for flag in flags]])
  assert_one_clear_line(result, message.format(folder=folder))
