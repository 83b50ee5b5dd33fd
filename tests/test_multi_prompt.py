"""Many prompts, one frozen model, through the real `evaluate`, `infer` and `export`: two tasks
in shared batches give what each run gives alone, prompt ensembles follow their stated rules,
and exported prompts carry their record."""

import json

import gin
import numpy as np
import pytest

import cli
from conftest import registered_labels
from prompt_tuning import export
from prompt_tuning.inference import ensemble
from prompt_tuning.inference import prompt_bank

TASKS = {'a': 'tiny_sentiment', 'b': 'tiny_opposite'}  # Prompt name -> the task it trains on.
LABELS = ['positive', 'negative']


@pytest.fixture(scope='module', autouse=True)
def label_words():
  """Both tasks rank-classify (their label words registered) in this module."""
  with registered_labels(TASKS.values(), LABELS):
    yield


def _run(module, run_file, *args):
  result = cli.run_in_process(module, run_file, *args)
  gin.clear_config()
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """{prompt name: MODEL_DIR of a finished 20-step run of its task}, one frozen model."""
  root = tmp_path_factory.mktemp('runs')
  for seed, (name, task) in enumerate(TASKS.items()):
    _run('train', None, f"--gin.MODEL_DIR='{root / name}'", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
         '--gin.TRAIN_STEPS=20', '--gin.EVAL_PERIOD=0', f'--gin.data.DataConfig.seed={seed}')
  return {name: root / name for name in TASKS}


def _alone(runs, module, run_file):
  """Each run's own single-prompt `module` (evaluate or infer) on its task, 8-way data."""
  for name, task in TASKS.items():
    _run(module, run_file, f"--gin.MODEL_DIR='{runs[name]}'",
         f"--gin.MIXTURE_OR_TASK_NAME='{task}'")


@pytest.fixture(scope='module')
def alone(runs):
  """{prompt name: its run's metrics, evaluated alone}."""
  _alone(runs, 'evaluate', 'prompt_eval.gin')
  return {name: json.loads((runs[name] / 'eval' / 'metrics_20.json').read_text())
          for name in TASKS}


def _together(tmp_path, module, run_file, specs, *args):
  """`module` with --prompt NAME=PATH for each spec, on a 4 x 2 (data x model) mesh."""
  flags = [arg for spec in specs for arg in ('--prompt', spec)]
  return _run(module, run_file, f"--gin.MODEL_DIR='{tmp_path}'", '--gin.NUM_PARTITIONS=2',
              *flags, *args)


def test_two_tasks_in_shared_batches_report_what_each_run_reports(runs, alone, tmp_path):
  result = _together(tmp_path, 'evaluate', 'prompt_eval.gin',
                     [f'{name}={runs[name]}' for name in TASKS])
  assert f'prompt b: {runs["b"]} (step 20, length 4) on task tiny_opposite' in result.stdout
  metrics = json.loads((tmp_path / 'eval' / 'prompts_metrics.json').read_text())
  assert metrics == {**alone['a'], **alone['b']}
  assert set(metrics) == {f'{task}/{metric}' for task in TASKS.values()
                          for metric in ('accuracy', 'rank_accuracy')}


def test_jsonl_of_interleaved_tasks_gets_each_runs_predictions(runs, tmp_path):
  _alone(runs, 'infer', 'prompt_infer.gin')
  lines = {name: [json.loads(line) for line in
                  (runs[name] / 'inference' / f'{task}-validation-20.jsonl').open()]
           for name, task in TASKS.items()}
  requests = [{'task': name, 'inputs': line['inputs'], 'id': number}
              for number, pair in enumerate(zip(lines['a'], lines['b']))
              for name, line in zip(TASKS, pair)]
  (tmp_path / 'requests.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in requests))
  _together(tmp_path, 'infer', 'prompt_infer.gin', [f'{name}={runs[name]}' for name in TASKS],
            f"--gin.INFER_INPUTS='{tmp_path / 'requests.jsonl'}'")
  answers = [json.loads(line) for line in
             (tmp_path / 'inference' / 'requests-predictions.jsonl').open()]
  assert [{k: v for k, v in a.items() if k != 'prediction'} for a in answers] == requests
  expected = [line['prediction'] for pair in zip(lines['a'], lines['b']) for line in pair]
  assert [a['prediction'] for a in answers] == expected
  assert len(set(expected)) > 1  # Both labels occur: the prompts decide.


@pytest.mark.parametrize('line, message', [
    ('not json', 'requests.jsonl:2 is not JSON'),
    ('{"inputs": "a fine film"}', 'requests.jsonl:2 needs a string "task" (a --prompt NAME)'),
    ('{"task": "c", "inputs": "a fine film"}', "unknown prompt name(s) ['c']; the bank holds"),
])
def test_a_bad_request_line_is_one_line_and_nothing_is_written(runs, tmp_path, line, message):
  requests = tmp_path / 'requests.jsonl'
  requests.write_text('{"task": "a", "inputs": "good film"}\n' + line + '\n')
  result = cli.run_in_process('infer', 'prompt_infer.gin', f"--gin.MODEL_DIR='{tmp_path}'",
                              '--prompt', f'a={runs["a"]}', f"--gin.INFER_INPUTS='{requests}'")
  gin.clear_config()
  assert result.returncode == 1 and result.stderr.count('\n') == 1, result.stderr
  assert message in result.stderr
  assert sorted(path.name for path in tmp_path.iterdir()) == ['requests.jsonl']


@pytest.fixture(scope='module')
def ensembles(runs, tmp_path_factory):
  """(metrics, {prompt or 'ensemble/<task>': predictions}) of one evaluate and one infer with
  two ensembles: prompt a three times on tiny_sentiment, and [a, b] on tiny_opposite, where
  the two disagree."""
  folder = tmp_path_factory.mktemp('ensembles')
  specs = [f'a{k}={runs["a"]}' for k in range(3)] + [f'x0={runs["a"]}', f'x1={runs["b"]}']
  on_opposite = "--gin.PROMPT_TASKS={'x0': 'tiny_opposite', 'x1': 'tiny_opposite'}"
  _together(folder, 'evaluate', 'prompt_eval.gin', specs, on_opposite)
  _together(folder, 'infer', 'prompt_infer.gin', specs, on_opposite)
  predictions = {}
  for line in (folder / 'inference' / 'prompts-validation.jsonl').open():
    line = json.loads(line)
    name = line['task'] if line['task'] != 'ensemble' else f'ensemble/{line["seqio_task"]}'
    predictions.setdefault(name, []).append(line['prediction'])
  return folder, json.loads((folder / 'eval' / 'prompts_metrics.json').read_text()), predictions


def test_an_ensemble_of_one_prompt_three_times_is_that_prompt(alone, ensembles):
  folder, metrics, predictions = ensembles
  for row in ('a0', 'a1', 'a2', *ensemble.SUMMARY_ROWS):
    for metric in ('accuracy', 'rank_accuracy'):
      assert metrics[f'tiny_sentiment/{row}/{metric}'] == alone['a'][f'tiny_sentiment/{metric}']
  assert predictions['ensemble/tiny_sentiment'] == predictions['a0'] == predictions['a2']
  table = (folder / 'eval' / 'ensemble-tiny_sentiment.md').read_text()
  assert table.splitlines()[0] == '| tiny_sentiment | accuracy | rank_accuracy |'
  png = (folder / 'eval' / 'ensemble-tiny_sentiment.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 1000


def test_two_disagreeing_prompts_follow_the_tie_rule(ensembles):
  """On tiny_opposite, x0 (a's prompt, trained on the opposite labels) disagrees with x1 (b's):
  every tie goes to the earlier prompt, x0; mean and best are over the two."""
  _, metrics, predictions = ensembles
  assert predictions['x0'] != predictions['x1']  # They disagree on some examples...
  assert predictions['ensemble/tiny_opposite'] == predictions['x0']  # ... ties go to x0.
  task = 'tiny_opposite'
  assert metrics[f'{task}/ensemble/accuracy'] == metrics[f'{task}/x0/accuracy']
  ranks = [metrics[f'{task}/{name}/rank_accuracy'] for name in ('x0', 'x1')]
  assert ranks[0] != ranks[1]
  assert metrics[f'{task}/mean/rank_accuracy'] == pytest.approx(np.mean(ranks))
  assert metrics[f'{task}/best/rank_accuracy'] == max(ranks)


def test_vote_and_mean_log_likelihood_on_hand_computed_cases():
  assert ensemble.vote(['yes', 'no', 'no']) == 'no'
  assert ensemble.vote(['yes', 'no']) == 'yes'  # A tie: the earliest prompt's answer.
  assert ensemble.vote(['no', 'yes', 'yes', 'no', 'maybe']) == 'no'
  # Prompts 1 and 2 prefer label 1 narrowly, prompt 3 label 0 strongly: the vote of the
  # argmaxes says 1, the mean log-likelihood (-0.70 vs -4.27) says 0.
  scores = np.array([[-2.0, -1.9], [-2.0, -1.9], [-0.1, -9.0]])
  assert ensemble.vote(list(scores.argmax(axis=1))) == 1
  assert ensemble.mean_log_likelihood(scores) == 0
  assert ensemble.mean_log_likelihood(np.array([[-1.0, -1.0]])) == 0  # Tie: the first label.


def test_a_prompt_of_other_frozen_weights_is_refused_in_one_line(runs, tmp_path):
  result = cli.run_in_process('evaluate', 'prompt_eval.gin', f"--gin.MODEL_DIR='{tmp_path}'",
                              '--gin.SEED=1', '--prompt', f'a={runs["a"]}')
  gin.clear_config()
  assert result.returncode == 1
  assert result.stderr.count('\n') == 1 and result.stderr.startswith(
      f'error: prompt a ({runs["a"]}) was trained on frozen weights '), result.stderr
  assert not tmp_path.joinpath('eval').exists()


@pytest.mark.parametrize('output_format', ['npy', 'peft'])
def test_export_writes_the_record_beside_the_prompt(runs, tmp_path, output_format):
  output = tmp_path / ('prompt.npy' if output_format == 'npy' else 'adapter')
  result = cli.run_main_in_process(export.main, [
      f'--model_dir={runs["a"]}', f'--format={output_format}', f'--output={output}'])
  assert result.returncode == 0, result.stderr
  record = (tmp_path / 'prompt.json' if output_format == 'npy' else output / 'prompt.json')
  assert json.loads(record.read_text()) == json.loads((runs['a'] / 'prompt.json').read_text())
  bank = prompt_bank.PromptBank(json.loads(record.read_text())['frozen_fingerprint'], 32,
                                [f'a={output}'])  # Verified: no allow_unverified needed.
  np.testing.assert_array_equal(bank.table().prompts[0], np.load(runs['a'] / 'prompt.npy'))
