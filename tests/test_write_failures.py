"""Writes that fail, through the real entry point: a disk that fills up during a run, a
read-only MODEL_DIR, a MODEL_DIR below a file. Each is one line naming the path, the cause
and the fix, with a failing exit; no half-written checkpoint is left, and the previous one
resumes once there is space."""

import errno
import logging
import os
import re
import signal
import subprocess
import time

import gin
import pytest

import cli
from prompt_tuning.training import run_lock
from prompt_tuning.training import write_errors
from test_bad_input import assert_one_clear_line, snapshot

RUN = ('--gin.CHECKPOINT_PERIOD=2', '--gin.train.train.eval_data=None')


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture
def tmpfs(tmp_path):
  """`mount(size)`: a fresh tmpfs of that size (a skip unless root may mount one here)."""
  mounted = []

  def mount(size: str, name: str = 'tmpfs'):
    if os.geteuid() != 0:
      pytest.skip('needs root to mount a small tmpfs (a disk that can fill up)')
    directory = tmp_path / name
    directory.mkdir()
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs',
                             str(directory)], capture_output=True, text=True)
    if result.returncode:
      pytest.skip(f'mount -t tmpfs is not permitted here: {result.stderr.strip()}')
    mounted.append(directory)
    return directory

  yield mount
  for directory in mounted:
    subprocess.run(['umount', '-l', str(directory)], check=False)


def _fill(directory) -> None:
  """Writes a file in `directory` until its file system is full."""
  fd = os.open(directory / 'filler', os.O_WRONLY | os.O_CREAT)
  try:
    for size in (1 << 20, 4096, 1):
      with pytest.raises(OSError) as full:
        while True:
          os.write(fd, b'\0' * size)
      assert full.value.errno == errno.ENOSPC
  finally:
    os.close(fd)


def _partial_saves(model_dir) -> list[str]:
  return [os.path.join(root, name) for root, folders, files in os.walk(model_dir)
          for name in folders + files if write_errors.PARTIAL_SAVE_MARKER in name]


def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_resumes(tmpfs):
  disk = tmpfs('16m')
  model_dir = disk / 'run'
  checkpoints = model_dir / 'checkpoints'
  command = cli.command('train', None, f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=40',
                        *RUN)
  run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=cli.environment())
  deadline = time.time() + 300
  while not (checkpoints / '2').is_dir():  # Step 2 is saved (renamed from its temporary name).
    assert run.poll() is None and time.time() < deadline, run.stderr.read()[-2000:]
    time.sleep(0.02)
  run.send_signal(signal.SIGSTOP)
  try:
    _fill(disk)
  finally:
    run.send_signal(signal.SIGCONT)
  _, stderr = run.communicate(timeout=300)

  errors = [line for line in stderr.splitlines() if line.startswith('error: ')]
  assert run.returncode == 1 and len(errors) == 1, stderr[-3000:]
  failed = re.fullmatch(
      rf'error: could not save the checkpoint of step (\d+) in {re.escape(str(checkpoints))}: '
      r'No space left on device; free space or choose another MODEL_DIR; the newest complete '
      r'checkpoint is step (\d+)\.', errors[0])
  assert failed, errors[0]
  noise = [line for line in stderr.splitlines() if line.startswith('Traceback') or
           re.match(r'E\d{4} .*(checkpoint|orbax|future)', line)]  # Not TF's start-up lines.
  assert not noise, stderr[-3000:]
  step, newest = int(failed[1]), int(failed[2])
  assert 2 <= newest < step < 40
  assert not _partial_saves(model_dir)
  assert max(int(name) for name in os.listdir(checkpoints)) == newest
  assert not (model_dir / run_lock.LOCK_NAME).exists()

  os.remove(disk / 'filler')
  resumed = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'",
                               f'--gin.TRAIN_STEPS={newest + 2}', *RUN)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'done: steps {newest} → {newest + 2}' in resumed.stdout


@pytest.fixture
def read_only_dir(tmp_path, tmpfs):
  """A directory this user cannot write: chmod 555, or as root (whom modes do not stop) a
  tmpfs mounted read-only."""
  if os.geteuid() != 0:
    directory = tmp_path / 'read_only'
    directory.mkdir()
    directory.chmod(0o555)
    yield directory
    directory.chmod(0o755)
    return
  directory = tmpfs('1m', 'read_only')
  result = subprocess.run(['mount', '-o', 'remount,ro', str(directory)], capture_output=True,
                          text=True)
  if result.returncode:
    pytest.skip(f'mount -o remount,ro is not permitted here: {result.stderr.strip()}')
  yield directory


def test_a_read_only_model_dir_or_one_below_a_file_is_refused_and_nothing_made(
    tmp_path, read_only_dir):
  why = 'on a read-only file system' if os.geteuid() == 0 else 'read-only for this user'
  (tmp_path / 'file').write_text('')
  cases = [(read_only_dir, f'(MODEL_DIR is {why}); choose a writable MODEL_DIR.'),
           (read_only_dir / 'run', f'(its parent {read_only_dir} is {why})'),
           (tmp_path / 'file' / 'run', f'{tmp_path / "file"} is a file, not a directory; '
                                       'choose another MODEL_DIR.')]
  for model_dir, message in cases:
    before = snapshot(tmp_path)
    result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'",
                                '--gin.TRAIN_STEPS=2', *RUN)
    assert_one_clear_line(result, message)
    assert snapshot(tmp_path) == before


def test_a_model_dir_that_only_looks_writable_fails_at_its_first_write(
    tmp_path, read_only_dir, monkeypatch):
  """As on NFS with root squashed: the up-front check passes, the first write (the lock)
  fails, in one line."""
  monkeypatch.setattr(os, 'access', lambda *args, **kwargs: True)
  model_dir = read_only_dir / 'run'
  result = cli.run_in_process('train', None, f"--gin.MODEL_DIR='{model_dir}'",
                              '--gin.TRAIN_STEPS=2', *RUN)
  cause = 'Read-only file system' if os.geteuid() == 0 else 'Permission denied'
  assert_one_clear_line(result, f'could not create MODEL_DIR {model_dir}: {cause}; make '
                        'MODEL_DIR writable or choose another MODEL_DIR.')
  assert not model_dir.exists()


def test_other_failed_writes_name_their_path_cause_and_fix(tmp_path):
  """config.gin, prompt.npy, the PNG (a write after `open` names no file) and TensorBoard
  (TensorFlow's own errors)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def raised(error):
    with pytest.raises(Exception) as caught:
      with write_errors.naming(str(tmp_path)):
        raise error
    return str(caught.value)

  assert raised(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == (
      f'a write failed (No space left on device) while training in MODEL_DIR {tmp_path}; '
      'free space or choose another MODEL_DIR.')
  assert raised(PermissionError(errno.EACCES, 'Permission denied',
                                str(tmp_path / 'config.gin'))) == (
      f'could not write {tmp_path / "config.gin"}: Permission denied; make MODEL_DIR '
      'writable or choose another MODEL_DIR.')
  elsewhere = FileNotFoundError(errno.ENOENT, 'No such file or directory', '/data/train.tsv')
  assert raised(elsewhere) == str(elsewhere)
  events = tmp_path / 'train' / 'events.out.tfevents.1.host.2.0.v2'
  assert raised(tf.errors.ResourceExhaustedError(
      None, None, f'{{{{function_node FlushSummaryWriter}}}} {events}; No space left on '
      f'device\n\tFailed to flush 1 events to {events}')) == (
          f'could not write {events}: No space left on device; free space or choose another '
          'MODEL_DIR.')
  quota = write_errors.checkpoint_save_error(
      6, tmp_path / 'checkpoints', ValueError("RESOURCE_EXHAUSTED: [os_error_code='122']"), None)
  assert str(quota) == (f'could not save the checkpoint of step 6 in {tmp_path}/checkpoints: '
                        'Disk quota exceeded; free space or choose another MODEL_DIR; no '
                        'complete checkpoint was saved yet.')


def test_a_failed_orbax_write_left_in_a_future_is_not_logged_but_others_are(caplog):
  """asyncio logs a background write's future that nobody retrieved, with its traceback; for
  orbax's failed writes the one-line error already says it all, for anything else it stays."""
  import asyncio  # pylint: disable=g-import-not-at-top
  import gc  # pylint: disable=g-import-not-at-top

  def future_failed_in(filename: str, error: Exception) -> None:
    namespace = {}
    exec(compile('def write(error):\n  raise error\n', filename, 'exec'), namespace)  # pylint: disable=exec-used
    loop = asyncio.new_event_loop()
    try:
      future = loop.create_future()
      try:
        namespace['write'](error)
      except Exception as e:  # pylint: disable=broad-except
        future.set_exception(e)
      del future  # Never retrieved: asyncio logs it as the future is collected.
      gc.collect()
    finally:
      loop.close()

  no_space = lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    future_failed_in(os.path.join(os.sep, 'site-packages', 'orbax', 'async_path.py'), no_space())
    assert not caplog.records
    future_failed_in(os.path.join(os.sep, 'site-packages', 'other', 'writer.py'), no_space())
    future_failed_in(os.path.join(os.sep, 'site-packages', 'orbax', 'async_path.py'),
                     ValueError('a bug, not a full disk'))
  assert [record.getMessage().splitlines()[0] for record in caplog.records] == [
      'Future exception was never retrieved'] * 2
