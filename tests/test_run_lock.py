"""One writer per MODEL_DIR: a second train run on a MODEL_DIR in use refuses in one line and
changes nothing; a stale lock (a dead process of this host, another host's lock without a
heartbeat) is reported and taken over; several hosts share process 0's decision."""

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

import cli
from prompt_tuning.training import run_lock
from test_bad_input import snapshot

RUN = ('--gin.CHECKPOINT_PERIOD=2', '--gin.train.train.eval_data=None')


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _dead_pid() -> int:
  """The pid of a process of this host that has ended."""
  child = subprocess.Popen([sys.executable, '-c', ''])
  child.wait()
  return child.pid


def _write_lock(model_dir, host=None, pid=None, heartbeat_age_s=0.0, **fields):
  """A lock file as another run would have left it."""
  when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
      seconds=heartbeat_age_s)
  record = {'host': host or socket.gethostname(), 'pid': pid or _dead_pid(),
            'started': when.isoformat(timespec='seconds'),
            'heartbeat': when.isoformat(timespec='seconds'), 'token': 'theirs', **fields}
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, run_lock.LOCK_NAME), 'w') as f:
    json.dump(record, f)
  return record


def test_a_second_run_refuses_and_changes_nothing_then_a_stale_lock_is_taken_over(tmp_path):
  model_dir = tmp_path / 'run'
  lock = model_dir / run_lock.LOCK_NAME
  first = subprocess.Popen(cli.command('train', None, f"--gin.MODEL_DIR='{model_dir}'",
                                       '--gin.TRAIN_STEPS=4', *RUN),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=cli.environment())
  try:
    deadline = time.time() + 300
    while not lock.exists():
      assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
      time.sleep(0.1)
    first.send_signal(signal.SIGSTOP)  # Holds the lock, writes nothing while the second runs.
    before = snapshot(model_dir)
    second = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'",
                                '--gin.TRAIN_STEPS=4', *RUN)
    assert snapshot(model_dir) == before
  finally:
    first.send_signal(signal.SIGCONT)
  errors = [line for line in second.stderr.splitlines() if line.startswith('error: ')]
  assert second.returncode == 1 and len(errors) == 1, second.stderr[-2000:]
  assert re.fullmatch(
      rf'error: MODEL_DIR {re.escape(str(model_dir))} is in use by another train run \(pid '
      rf'{first.pid} on host {re.escape(socket.gethostname())} since \S+; lock '
      rf'{re.escape(str(lock))}\); wait for it to end or stop '
      r'it, or choose another MODEL_DIR\.', errors[0]), errors[0]
  assert 'Traceback' not in second.stderr
  stdout, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-2000:]
  assert 'done: steps 0 → 4' in stdout and not lock.exists()

  stale = _write_lock(model_dir)  # As a run killed with `kill -9` leaves it.
  resumed = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'",
                               '--gin.TRAIN_STEPS=6', *RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert (f'MODEL_DIR {model_dir}: taking over the stale lock of the train run pid '
          f'{stale["pid"]} on host {stale["host"]} since {stale["started"]} (that process no '
          'longer runs).') in resumed.stderr
  assert 'done: steps 4 → 6' in resumed.stdout and not lock.exists()


def test_a_live_run_of_this_host_holds_the_lock_and_a_reused_pid_does_not(tmp_path):
  holder = _write_lock(tmp_path, pid=os.getpid(),
                       process_start=run_lock.process_start(os.getpid()))
  with pytest.raises(run_lock.LockRefused, match=rf'pid {os.getpid()} on host '):
    run_lock.RunLock(str(tmp_path)).acquire()
  assert json.loads((tmp_path / run_lock.LOCK_NAME).read_text()) == holder

  _write_lock(tmp_path, pid=os.getpid(), process_start='1')  # Our pid, another process.
  with run_lock.hold(str(tmp_path)):
    mine = json.loads((tmp_path / run_lock.LOCK_NAME).read_text())
    assert mine['token'] != 'theirs' and mine['pid'] == os.getpid()
  assert not (tmp_path / run_lock.LOCK_NAME).exists()


def test_another_hosts_lock_is_stale_only_without_a_heartbeat(tmp_path, capsys):
  _write_lock(tmp_path, host='other-host', pid=1, heartbeat_age_s=60)
  with pytest.raises(run_lock.LockRefused) as refused:
    run_lock.RunLock(str(tmp_path)).acquire()
  assert re.fullmatch(
      rf'MODEL_DIR {re.escape(str(tmp_path))} is in use by another train run \(pid 1 on host '
      r'other-host since \S+; lock \S+/train.lock\); last heartbeat 6\d s ago; wait for it to '
      r'end or stop it \(after 10 minutes without a heartbeat the lock is stale; delete \S+ if '
      r'that run is gone\), or choose another MODEL_DIR\.', str(refused.value)), str(refused.value)

  _write_lock(tmp_path, host='other-host', pid=1, heartbeat_age_s=run_lock.STALE_AFTER_S + 60)
  with run_lock.hold(str(tmp_path)):
    pass
  notice = capsys.readouterr().err
  assert 'taking over the stale lock of the train run pid 1 on host other-host' in notice
  assert '(no heartbeat for 11 minutes).' in notice


def test_an_unreadable_lock_is_stale_and_the_lock_goes_when_the_run_fails(tmp_path, capsys):
  (tmp_path / run_lock.LOCK_NAME).write_text('{"host": ')
  with pytest.raises(ValueError, match='boom'):
    with run_lock.hold(str(tmp_path)):
      assert (tmp_path / run_lock.LOCK_NAME).exists()
      raise ValueError('boom')
  assert 'its lock file is unreadable' in capsys.readouterr().err
  assert not (tmp_path / run_lock.LOCK_NAME).exists()


def test_the_holder_refreshes_its_heartbeat(tmp_path, monkeypatch):
  monkeypatch.setattr(run_lock, 'HEARTBEAT_S', 0.2)
  with run_lock.hold(str(tmp_path)):
    first = json.loads((tmp_path / run_lock.LOCK_NAME).read_text())
    time.sleep(1.5)
    later = json.loads((tmp_path / run_lock.LOCK_NAME).read_text())
  assert later['heartbeat'] > first['heartbeat'] and later['started'] == first['started']
  assert os.listdir(tmp_path) == []  # No heartbeat temporary file left behind.


def test_every_process_of_a_job_stops_with_process_0s_line(tmp_path, monkeypatch):
  refusal = 'MODEL_DIR /x is in use by another train run (pid 1 on host h since t)'
  sent = np.zeros(2048, np.uint8)
  sent[:len(refusal)] = np.frombuffer(refusal.encode(), np.uint8)
  monkeypatch.setattr(run_lock.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(run_lock.multihost_utils, 'broadcast_one_to_all', lambda x: sent)
  monkeypatch.setattr(run_lock.jax, 'process_index', lambda: 1)
  with pytest.raises(run_lock.LockRefused, match=re.escape(refusal)):
    with run_lock.hold(str(tmp_path)):
      pass
  assert os.listdir(tmp_path) == []  # Only process 0 touches the lock.

  monkeypatch.setattr(run_lock.jax, 'process_index', lambda: 0)
  monkeypatch.setattr(run_lock.multihost_utils, 'broadcast_one_to_all', lambda x: x)
  with run_lock.hold(str(tmp_path)):
    assert (tmp_path / run_lock.LOCK_NAME).exists()
  _write_lock(tmp_path, pid=os.getpid(), process_start=run_lock.process_start(os.getpid()))
  with pytest.raises(run_lock.LockRefused, match='is in use by another train run'):
    with run_lock.hold(str(tmp_path)):
      pass
