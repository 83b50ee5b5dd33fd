"""Several hosts, for real: two processes on this machine (CPU, gloo collectives, 2 devices
each) train together and end with the prompt one process with 4 devices gets; when one is
killed, the other stops with one line."""

import os
import re
import socket
import subprocess
import time

import numpy as np
import pytest

import cli
import multihost_task
from prompt_tuning.training import distributed


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(tmp_path, model_dir, num_devices, *flags):
  env = {**cli.environment(num_devices), 'SHARDED_TASK_DIR': str(tmp_path / 'data'),
         'SHARD_LOG': str(model_dir) + '.ids'}
  command = cli.command(
      'train', None, f"--gin.MODEL_DIR='{model_dir}'",
      "--gin.MIXTURE_OR_TASK_NAME='sharded_sentiment'",
      "--gin.MIXTURE_OR_TASK_MODULE='multihost_task'", '--gin.TRAIN_STEPS=3',
      '--gin.EVAL_PERIOD=0', '--gin.DROPOUT_RATE=0.0', '--gin.data.DataConfig.shuffle=False',
      '--gin.NUM_PARTITIONS=2', *flags)
  return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env)


def _finish(process):
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]
  return stdout


def _training_ids(path) -> list[int]:
  return [int(line) for line in open(path).read().split() if not line.startswith('v')]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('multihost')
  (tmp_path / 'data').mkdir()
  multihost_task.write_files(str(tmp_path / 'data'))
  one, two = tmp_path / 'one_process', tmp_path / 'two_processes'
  address = f'localhost:{_free_port()}'
  single = _start(tmp_path, one, 4, '--gin.train.train.eval_data=None')  # Only its prompt.
  hosts = [_start(tmp_path, two, 2, f'--coordinator_address={address}', '--process_count=2',
                  f'--process_index={index}') for index in (0, 1)]
  _finish(single)
  return one, two, [_finish(host) for host in hosts]


def test_two_processes_train_the_prompt_one_process_does(runs):
  one, two, _ = runs
  np.testing.assert_allclose(np.load(two / 'prompt.npy'), np.load(one / 'prompt.npy'),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.load(two / 'prompt.npy'), 0.0)
  assert sorted(os.listdir(two / 'checkpoints')) == ['3']
  assert len(os.listdir(two / 'train')) == 1  # One TensorBoard file: process 0's.


def test_each_process_reads_its_own_shard(runs):
  one, two, _ = runs
  first, second = (_training_ids(f'{two}.ids.{index}') for index in (0, 1))
  batches = 3 * 4  # Steps x examples per host and batch.
  assert all(i % 2 == 0 for i in first) and len(first) >= batches
  assert all(i % 2 == 1 for i in second) and len(second) >= batches
  # Together they read what one process reads first (the prompts above show the batches
  # match); the logs may hold a few more examples, read ahead.
  assert set(range(2 * batches)) <= set(first) | set(second)
  assert set(range(2 * batches)) <= set(_training_ids(f'{one}.ids.0'))


def test_only_process_zero_reports(runs):
  _, _, (primary_stdout, other_stdout) = runs
  assert 'eval at step 3: sharded_sentiment/accuracy' in primary_stdout
  assert 'done: steps 0 → 3' in primary_stdout
  assert 'eval at step' not in other_stdout and 'done:' not in other_stdout


def test_a_host_that_never_joins_is_a_clear_error(tmp_path):
  (tmp_path / 'data').mkdir()
  started = time.time()
  lonely = _start(tmp_path, tmp_path / 'run', 2, f'--coordinator_address=localhost:{_free_port()}',
                  '--process_count=2', '--process_index=0', '--initialization_timeout=3')
  _, stderr = lonely.communicate(timeout=120)
  assert lonely.returncode == 1
  assert stderr.strip().splitlines()[-1].startswith(
      'error: not every process joined the coordinator at localhost:'), stderr[-2000:]
  assert '--initialization_timeout' in stderr
  assert time.time() - started < 60


@pytest.mark.parametrize('flags,message', [
    (dict(process_count=2), 'need --coordinator_address'),
    (dict(coordinator_address='localhost:1', process_count=2), 'needs --process_count and'),
    (dict(coordinator_address='localhost:1', process_count=2, process_index=2), 'not in [0, 2)'),
])
def test_inconsistent_flags_are_refused(flags, message):
  with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(')', r'\)')):
    distributed.initialize(**flags)


def test_a_coordinator_port_in_use_is_one_clear_error():
  with socket.socket(socket.AF_INET6) as taken:
    taken.bind(('::', 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(RuntimeError, match=rf'could not start the coordination service on '
                       rf'\[::\]:{port} \(.+\); is another run using that port\?'):
      distributed.initialize(f'localhost:{port}', process_count=2, process_index=0)
  assert not distributed.jax.distributed.is_initialized()


def test_a_cloud_tpu_vm_joins_its_pod_without_flags(monkeypatch):
  """On a TPU VM, JAX finds the pod itself (we cannot reach one here: record the call)."""
  calls = []
  monkeypatch.setattr(distributed, 'on_cloud_tpu_vm', lambda: True)
  monkeypatch.setattr(distributed.jax.distributed, 'initialize',
                      lambda *args, **kwargs: calls.append((args, kwargs)))
  distributed.initialize(timeout_s=30)
  assert calls == [((None, None, None), {'initialization_timeout': 90,
                                         'heartbeat_timeout_seconds': 210})]
  monkeypatch.setattr(distributed, 'on_cloud_tpu_vm', lambda: False)
  distributed.initialize()  # One process: nothing to join.
  assert len(calls) == 1


def _wait_for(condition, processes, timeout_s: float) -> None:
  """Polls `condition` until it holds; fails if a process ends or `timeout_s` passes first."""
  deadline = time.time() + timeout_s
  while not condition():
    for process in processes:
      if process.poll() is not None:
        _, stderr = process.communicate()
        pytest.fail(f'a process ended early (status {process.returncode}): {stderr[-3000:]}')
    if time.time() > deadline:
      pytest.fail(f'nothing after {timeout_s} s')
    time.sleep(0.2)


@pytest.mark.parametrize('lost', [1, 0])  # 0 also runs the coordination service's host.
def test_a_lost_host_is_one_line_on_the_survivor(tmp_path, lost):
  """SIGKILL one of two processes mid-training: the other stops within seconds, its last line
  naming the lost process and the last checkpoint saved; no traceback, no native abort."""
  (tmp_path / 'data').mkdir()
  multihost_task.write_files(str(tmp_path / 'data'))
  model_dir = tmp_path / 'run'
  address = f'localhost:{_free_port()}'
  hosts = [_start(tmp_path, model_dir, 2, f'--coordinator_address={address}', '--process_count=2',
                  f'--process_index={index}', '--gin.TRAIN_STEPS=100000',
                  '--gin.CHECKPOINT_PERIOD=2', '--heartbeat_timeout=3') for index in (0, 1)]
  try:
    _wait_for(lambda: (model_dir / 'checkpoints' / '2').is_dir(), hosts, timeout_s=400)
    hosts[lost].kill()  # SIGKILL: no chance to say goodbye.
    killed = time.time()
    survivor = hosts[1 - lost]
    _, stderr = survivor.communicate(timeout=120)
    seconds = time.time() - killed
  finally:
    for host in hosts:
      host.kill()
      host.communicate()
  assert survivor.returncode == 1, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  found = re.fullmatch(rf'error: lost process {lost} of 2 \(its host stopped answering\); the last '
                       r'checkpoint saved is step (\d+) in (.+); relaunch every host to resume\.',
                       last)
  assert found, stderr[-3000:]
  saved = [int(name) for name in os.listdir(model_dir / 'checkpoints') if name.isdigit()]
  assert int(found[1]) == max(saved) >= 2 and found[2] == str(model_dir / 'checkpoints')
  for marker in ('Traceback', '*** ', 'Check failure', 'Fatal Python error'):
    assert marker not in stderr, stderr[-3000:]
  assert [line.startswith('error:') for line in stderr.splitlines()].count(True) == 1
  assert seconds < 30


class _KeyValueStore:
  """The coordination service's key-value calls that `ProcessWatch` makes."""

  def __init__(self):
    self.values = {}

  def key_value_increment(self, key, increment):
    self.values[key] = str(int(self.values.get(key, 0)) + increment)

  def key_value_set(self, key, value):
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    return [(key, value) for key, value in self.values.items() if key.startswith(prefix)]


def test_a_silent_process_is_lost_after_the_heartbeat_timeout():
  now = [0.0]
  store = _KeyValueStore()
  watches = [distributed.ProcessWatch(store, index, 3, timeout_s=10, clock=lambda: now[0])
             for index in range(3)]
  for _ in range(3):  # Everyone beats.
    now[0] += 4
    assert not any(watch.check() for watch in watches)
  watches[2].finish()  # Done: not lost, however long it is silent.
  for _ in range(3):  # Process 1 is silent from here on.
    now[0] += 4
    assert watches[0].check() == []
  now[0] += 4
  assert watches[0].check() == [1]


def test_a_lost_process_is_one_line_and_exit_status_1(tmp_path, monkeypatch, capsys):
  (tmp_path / '4').mkdir()
  (tmp_path / '6.orbax-checkpoint-tmp-1').mkdir()  # An unfinished save does not count.
  monkeypatch.setattr(distributed, '_checkpoints_directory', str(tmp_path))
  exits, store = [], _KeyValueStore()
  distributed.ProcessWatch(store, 1, 2, timeout_s=10, exit_process=exits.append).lost(None)
  assert exits == [1]
  assert capsys.readouterr().err == (
      f'error: lost process 0 of 2 (its host stopped answering); the last checkpoint saved is '
      f'step 4 in {tmp_path}; relaunch every host to resume.\n')
  assert 'prompt_tuning/watch/left/1' in store.values  # Process 0 waits for it.


@pytest.mark.parametrize('error,lost', [
    (ValueError('UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:547] '
                'Connection closed by peer [127.0.0.1]:62103'), True),
    (ValueError('UNKNOWN: Gloo all-reduce failed: [external/gloo/gloo/transport/tcp/pair.cc:538] '
                'Read error [127.0.0.1]:27537: Connection reset by peer'), True),
    (OSError('[Errno 104] Connection reset by peer'), False),  # E.g. reading gs://.
    (ValueError('bad learning rate'), False),
])
def test_errors_that_mean_a_lost_process(error, lost):
  assert distributed.is_lost_process_error(error) is lost
  try:
    try:
      raise error
    except Exception as e:
      raise TimeoutError('Timed out while waiting for async_write_complete barrier.') from e
  except TimeoutError as wrapped:
    assert distributed.is_lost_process_error(wrapped) is lost  # orbax wraps it.
