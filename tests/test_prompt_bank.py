"""The prompt bank: a trained run's record, every source, prompts of several lengths in one
table, and each refusal in one line."""

import json
import re

import gin
import numpy as np
import pytest

import cli
from conftest import registered_labels
from prompt_tuning import interpret
from prompt_tuning.formats import prompt_formats
from prompt_tuning.inference import prompt_bank

LABELS = ['positive', 'negative']
WIDTH = 32  # emb_dim of models/t5_1_1_tiny.gin.


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(MODEL_DIR of a finished 2-step run of tiny_sentiment, the frozen fingerprint it
  printed); the task's label words are registered only while it trains."""
  model_dir = tmp_path_factory.mktemp('run')
  with registered_labels(['tiny_sentiment'], LABELS):
    result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'",
                                '--gin.TRAIN_STEPS=2', '--gin.EVAL_PERIOD=0',
                                '--gin.CHECKPOINT_PERIOD=1')
  gin.clear_config()
  assert result.returncode == 0, result.stderr[-2000:]
  return model_dir, re.search(r'frozen weights fingerprint (\w+): unchanged', result.stdout)[1]


def write_npy(path, length, fingerprint=None, width=WIDTH, seed=0):
  """A random prompt [length, width] at `path`, and its record `<name>.json` when a
  `fingerprint` is given; returns the prompt."""
  prompt = np.random.RandomState(seed).randn(length, width).astype(np.float32)
  np.save(path, prompt)
  if fingerprint:
    path.with_suffix('.json').write_text(json.dumps(
        {'frozen_fingerprint': fingerprint, 'prompt_length': length, 'embed_dim': width}))
  return prompt


def refused(action, *parts):
  """`action()` raises one line that contains each of `parts`."""
  with pytest.raises((ValueError, FileNotFoundError)) as caught:
    action()
  message = str(caught.value)
  assert '\n' not in message and all(part in message for part in parts), message


def test_train_writes_the_prompt_record(run):
  model_dir, fingerprint = run
  record = json.loads((model_dir / 'prompt.json').read_text())
  assert set(record) == set(prompt_bank.RECORD_FIELDS)
  assert record['frozen_fingerprint'] == fingerprint
  assert record['frozen_path'] == 'random init (seed 0)'
  assert (record['task'], record['prompt_length'], record['embed_dim'], record['label_words'],
          record['step']) == ('tiny_sentiment', 4, WIDTH, LABELS, 2)
  assert set(record['eval_metrics']) == {'tiny_sentiment/accuracy',
                                         'tiny_sentiment/rank_accuracy'}
  assert all(isinstance(value, float) for value in record['eval_metrics'].values())


def test_train_keeps_the_initial_prompt_for_interpret(run):
  """Class-label initialisation: the first rows are the label words' embeddings, which two
  steps then move; interpret measures movement from this file by default."""
  model_dir, _ = run
  initial, trained = np.load(model_dir / 'initial_prompt.npy'), np.load(model_dir / 'prompt.npy')
  assert initial.shape == trained.shape == (4, WIDTH) and not np.array_equal(initial, trained)
  assert interpret.initial_prompt_of(str(model_dir)) == str(model_dir / 'initial_prompt.npy')
  assert interpret.initial_prompt_of(str(model_dir / 'prompt.npy')) is None


def test_a_run_loads_with_its_record_or_by_step(run):
  model_dir, fingerprint = run
  bank = prompt_bank.PromptBank(fingerprint, WIDTH, [f'final={model_dir}', f'step_2={model_dir}@2',
                                                     f'step_1={model_dir}@1'])
  assert bank.names == ['final', 'step_2', 'step_1']
  final = json.loads((model_dir / 'prompt.json').read_text())
  assert bank.record('final') == bank.record('step_2') == final  # Step 2 is the last.
  assert bank.record('step_1') == {  # The run's task and labels; the metrics of step 1 unknown.
      **dict.fromkeys(prompt_bank.RECORD_FIELDS), 'frozen_fingerprint': fingerprint,
      'frozen_path': 'random init (seed 0)', 'prompt_length': 4, 'embed_dim': WIDTH, 'step': 1,
      'task': 'tiny_sentiment', 'label_words': LABELS}
  table = bank.table()
  np.testing.assert_array_equal(table.prompts[0], np.load(model_dir / 'prompt.npy'))
  np.testing.assert_array_equal(table.prompts[1], table.prompts[0])
  assert not np.array_equal(table.prompts[2], table.prompts[0])


def test_npy_files_and_peft_adapters_load_with_or_without_a_record(tmp_path):
  with_record = write_npy(tmp_path / 'a.npy', 3, 'f00d')
  without = write_npy(tmp_path / 'b.npy', 2, seed=1)
  adapter = write_npy(tmp_path / 'c.npy', 4, seed=2)
  prompt_formats.save_peft(str(tmp_path / 'adapter'), adapter)
  (tmp_path / 'adapter' / 'prompt.json').write_text(json.dumps({'frozen_fingerprint': 'f00d'}))
  bank = prompt_bank.PromptBank('f00d', WIDTH, [f'a={tmp_path / "a.npy"}',
                                                f'peft={tmp_path / "adapter"}'])
  bank.add(f'b={tmp_path / "b.npy"}', allow_unverified=True)
  for name, prompt in (('a', with_record), ('peft', adapter), ('b', without)):
    row = bank.ids([name])[0]
    np.testing.assert_array_equal(bank.table().prompts[row, -len(prompt):], prompt)
  assert [bank.record(name)['frozen_fingerprint'] for name in ('a', 'peft')] == ['f00d'] * 2
  assert bank.record('b') == {**dict.fromkeys(prompt_bank.RECORD_FIELDS), 'prompt_length': 2,
                              'embed_dim': WIDTH}


def test_prompts_of_lengths_2_3_and_4_share_one_left_padded_table(tmp_path):
  written = {name: write_npy(tmp_path / f'{name}.npy', length, 'f00d', seed=length)
             for name, length in (('two', 2), ('three', 3), ('four', 4))}
  bank = prompt_bank.PromptBank('f00d', WIDTH, [f'{name}={tmp_path / name}.npy'
                                                for name in written])
  table = bank.table()
  assert table.prompts.shape == (3, 4, WIDTH) and table.lengths.tolist() == [2, 3, 4]
  for row, prompt in zip(table.prompts, written.values()):
    np.testing.assert_array_equal(row[:4 - len(prompt)], 0)
    np.testing.assert_array_equal(row[4 - len(prompt):], prompt)
  ids = bank.ids(['four', 'two', 'three', 'two'])
  assert ids.dtype == np.int32 and ids.tolist() == [2, 0, 1, 0]
  _, mask = table.select(ids)
  assert np.asarray(mask).sum(axis=1).tolist() == [4, 2, 3, 2]


def test_refusals_are_one_line(tmp_path):
  write_npy(tmp_path / 'ok.npy', 2, 'f00d')
  write_npy(tmp_path / 'other.npy', 2, 'beef')
  write_npy(tmp_path / 'narrow.npy', 2, 'f00d', width=16)
  write_npy(tmp_path / 'bare.npy', 2)
  write_npy(tmp_path / 'stale.npy', 3)
  (tmp_path / 'stale.json').write_text(json.dumps({'frozen_fingerprint': 'f00d',
                                                   'prompt_length': 2}))
  write_npy(tmp_path / 'broken.npy', 2)
  (tmp_path / 'broken.json').write_text('{"frozen_fingerprint": ')
  bank = prompt_bank.PromptBank('f00d', WIDTH, [f'ok={tmp_path / "ok.npy"}'])
  refused(lambda: bank.add(f'other={tmp_path / "other.npy"}'), 'other', 'beef', 'f00d')
  refused(lambda: bank.add(f'narrow={tmp_path / "narrow.npy"}'), 'narrow', '16', '32')
  refused(lambda: bank.add(f'ok={tmp_path / "other.npy"}'), 'ok', 'twice', 'own NAME')
  refused(lambda: bank.add(f'bare={tmp_path / "bare.npy"}'), 'bare.json',
          'allow_unverified=True')
  refused(lambda: bank.add(f'gone={tmp_path / "gone.npy"}'), 'does not exist')
  refused(lambda: bank.add(f'stale={tmp_path / "stale.npy"}'), '[2, 32]', '[3, 32]',
          'rewrite or remove it')
  refused(lambda: bank.add(f'broken={tmp_path / "broken.npy"}'), 'broken.json is not JSON')
  refused(lambda: bank.ids(['ok', 'nope']), "['nope']", "['ok']")
  prompt_formats.save_peft(str(tmp_path / 'causal'), write_npy(tmp_path / 'c.npy', 2),
                           task_type='CAUSAL_LM')
  seq2seq = prompt_bank.PromptBank('f00d', WIDTH, task_type='SEQ_2_SEQ_LM')
  refused(lambda: seq2seq.add(f'causal={tmp_path / "causal"}', allow_unverified=True),
          'task_type CAUSAL_LM', 'takes SEQ_2_SEQ_LM adapters')
  assert bank.names == ['ok'] and not seq2seq.names  # Nothing refused was added.


@pytest.mark.parametrize('spec', ['no_equals', '=x.npy', 'a=', 'a b=x.npy', 'a=run@last',
                                  'a=run@'])
def test_a_bad_spec_is_one_line(spec):
  refused(lambda: prompt_bank.parse_spec(spec), 'NAME=PATH or NAME=PATH@STEP')


def test_a_spec_names_a_path_and_maybe_a_step():
  spec = prompt_bank.PromptSpec
  assert prompt_bank.parse_spec('rte=/runs/rte@300') == spec('rte', '/runs/rte', 300)
  assert prompt_bank.parse_spec('a.b-c=/x/p.npy') == spec('a.b-c', '/x/p.npy')
