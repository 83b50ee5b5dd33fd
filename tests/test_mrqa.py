"""MRQA tasks from small JSONL(.gz) files written as MRQA publishes them: batches, T5's
SQuAD format, SQuAD's EM / F1 over all answers, and the one-line error for a missing file."""

import gzip
import json
import os
import subprocess
import sys

import pytest
import seqio

import test_glue  # First: it points T5_VOCABULARY_PATH at the test vocabulary.
from paths import VOCAB_PATH
from tasks import mrqa

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTEXT = {'context': 'The Hobbit was written by J. R. R. Tolkien in 1937.',
           'qas': [{'qid': 'q1', 'question': 'Who wrote The Hobbit?',
                    'answers': ['J. R. R. Tolkien', 'Tolkien'], 'detected_answers': []},
                   {'qid': 'q2', 'question': 'When was it written?', 'answers': ['1937'],
                    'detected_answers': []}]}


def _write(path, dataset: str, split: str) -> None:
  lines = [json.dumps({'header': {'dataset': dataset, 'split': split}}), json.dumps(CONTEXT)]
  text = '\n'.join(lines) + '\n'
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == '.gz':
    with gzip.open(path, 'wt', encoding='utf-8') as f:
      f.write(text)
  else:
    path.write_text(text)


@pytest.fixture(name='data_dir')
def fixture_data_dir(tmp_path, monkeypatch):
  """Every MRQA file, gzipped as published, except DROP's (unzipped: also accepted)."""
  _write(tmp_path / 'train' / 'SQuAD.jsonl.gz', 'SQuAD', 'train')
  for name in (mrqa.SQUAD_FILE, *mrqa.OUT_OF_DOMAIN.values()):
    suffix = '.jsonl' if name == 'DROP' else '.jsonl.gz'
    _write(tmp_path / 'dev' / f'{name}{suffix}', name, 'dev')
  monkeypatch.setenv(mrqa.DATA_DIR_VARIABLE, str(tmp_path))
  return tmp_path


def _examples(name: str, split: str = 'validation') -> list[dict]:
  dataset = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False)
  return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize('name,split', [('mrqa_squad', 'train')] + [
    (name, 'validation') for name in mrqa.task_names()])
def test_every_task_makes_batches(data_dir, name, split):
  del data_dir
  dataset = seqio.get_mixture_or_task(name).get_dataset(test_glue.LENGTHS, split=split,
                                                        shuffle=False)
  converted = seqio.EncDecFeatureConverter(pack=False)(dataset, test_glue.LENGTHS)
  test_glue.check_batch(next(converted.batch(2).as_numpy_iterator()))


def test_the_mixture_evaluates_the_six_out_of_domain_sets():
  mixture = seqio.get_mixture_or_task(mrqa.MIXTURE)
  assert sorted(task.name for task in mixture.tasks) == sorted(mrqa.task_names()[1:])
  assert all(task.splits == ('validation',) for task in mixture.tasks)


def test_each_question_is_one_example_in_t5_squad_format(data_dir):
  del data_dir
  first, second = _examples('mrqa_bioasq')
  assert first['inputs_pretokenized'].decode() == (
      'question: Who wrote The Hobbit? context: The Hobbit was written by J. R. R. Tolkien '
      'in 1937.')
  assert first['targets_pretokenized'].decode() == 'J. R. R. Tolkien'
  assert first['answers'].tolist() == [b'J. R. R. Tolkien', b'Tolkien']
  assert second['targets_pretokenized'].decode() == '1937'
  assert first['targets'][-1] == 1  # EOS.


def test_squad_exact_match_and_f1_take_the_best_answer(data_dir):
  del data_dir
  task = seqio.get_mixture_or_task('mrqa_squad')
  examples = _examples('mrqa_squad') * 2
  predictions = [b'tolkien.', b'in 1937', b'The  J.R.R. Tolkien', b'1936']
  targets = [task.postprocess_fn(b'', example=e, is_target=True) for e in examples]
  predicted = [task.postprocess_fn(p, example=e) for p, e in zip(predictions, examples)]
  assert targets[0] == ['J. R. R. Tolkien', 'Tolkien']
  # 'tolkien.' normalises to ['tolkien'] = the answer 'Tolkien': EM 1, F1 1.
  # 'in 1937' vs '1937': EM 0, F1 2 * (1/2 * 1) / (1/2 + 1) = 2/3.
  # 'The  J.R.R. Tolkien' -> ['jrr', 'tolkien']: EM 0; best F1 against 'Tolkien':
  #   2 * (1/2 * 1) / (1/2 + 1) = 2/3 (against 'j r r tolkien': 2 * (1/2 * 1/4) / (3/4) = 1/3).
  # '1936': EM 0, F1 0. Means: EM 1/4, F1 (1 + 2/3 + 2/3 + 0) / 4 = 7/12.
  results = {}
  for metric_fn in task.predict_metric_fns:
    results.update(metric_fn(targets, predicted))
  assert results == pytest.approx({'exact_match': 25.0, 'f1': 700 / 12})


def test_perfect_predictions_score_100_through_seqio(data_dir):
  del data_dir
  evaluator = seqio.Evaluator('mrqa_drop', feature_converter=seqio.EncDecFeatureConverter(
      pack=False), eval_split='validation', sequence_length={'inputs': 32, 'targets': 16})
  perfect = lambda dataset: [(i, f['decoder_target_tokens'].tolist())
                             for i, f in dataset.as_numpy_iterator()]
  results, _ = evaluator.evaluate(compute_metrics=True, predict_fn=perfect,
                                  score_fn=lambda dataset: [])
  assert results.result()['mrqa_drop'] == {'exact_match': 100.0, 'f1': 100.0}


def test_a_missing_file_is_a_one_line_error_naming_the_path(tmp_path, monkeypatch):
  monkeypatch.setenv(mrqa.DATA_DIR_VARIABLE, str(tmp_path))
  with pytest.raises(mrqa.MissingMrqaDataError) as error:
    _examples('mrqa_race')
  assert isinstance(error.value, FileNotFoundError)
  assert str(error.value) == (
      f'MRQA file {tmp_path}/dev/RACE.jsonl.gz not found (MRQA_DATA_DIR={tmp_path}); put the '
      'published RACE.jsonl.gz (or unzipped .jsonl) there.')
  monkeypatch.delenv(mrqa.DATA_DIR_VARIABLE)
  with pytest.raises(mrqa.MissingMrqaDataError, match='^MRQA_DATA_DIR is not set; '):
    _examples('mrqa_squad', split='train')


def test_the_cli_reports_a_missing_file_in_one_line(tmp_path):
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu', 'T5_VOCABULARY_PATH':
         VOCAB_PATH, mrqa.DATA_DIR_VARIABLE: str(tmp_path)}
  result = subprocess.run(
      [sys.executable, '-m', 'prompt_tuning.show_task', 'mrqa_squad', '--module=tasks.mrqa',
       '--split=train'], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      f'error: MRQA file {tmp_path}/train/SQuAD.jsonl.gz not found '
      f'(MRQA_DATA_DIR={tmp_path}); put the published SQuAD.jsonl.gz (or unzipped .jsonl) '
      'there.')
