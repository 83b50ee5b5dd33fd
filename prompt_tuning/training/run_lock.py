"""One writer per MODEL_DIR: a train run holds `MODEL_DIR/train.lock` while it writes there.

The lock file is JSON: the holder's `host` and `pid` (with, on Linux, the process's start
time, so that a reused pid is not taken for the holder), `started`, and a `heartbeat` time
(UTC) that the holder rewrites every `HEARTBEAT_S` seconds. A second train run on the same
MODEL_DIR refuses in one line naming the holder, and changes nothing there.

A lock is stale, and is taken over with one line on stderr, when
- it was written on this host (hosts are told apart by `socket.gethostname()`) and its
  process no longer runs (so a run killed with `kill -9` resumes by running the same
  command again), or
- it was written on another host (MODEL_DIR on a shared file system or gs://) and its
  heartbeat is more than `STALE_AFTER_S` seconds old (ten missed heartbeats: a dead host's
  lock frees itself, clocks a few minutes apart do no harm).

On several hosts, process 0 takes the lock for the job and tells the others whether it
could: they all stop with the same line if not. Evaluate and infer take no lock: they only
read MODEL_DIR (and write their own files under eval/ and inference/).

A local lock is written whole under a temporary name and hard-linked into place (or created
with O_EXCL where there are no hard links), so two runs starting together cannot both get
it. On gs:// there is no exclusive create: the lock is written, read back after `SETTLE_S`,
and the run proceeds only if it is still its own. A refused run only reads.
"""

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Iterator, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from prompt_tuning.training import checkpoints
from prompt_tuning.training import write_errors

LOCK_NAME = 'train.lock'
HEARTBEAT_S = 60
STALE_AFTER_S = 600
SETTLE_S = 1.0
_MESSAGE_BYTES = 2048  # How much of a refusal process 0 sends the other processes.


class LockRefused(RuntimeError):
  """MODEL_DIR is in use by another train run, or the lock cannot be written."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _age_s(when: str) -> float:
  return time.time() - datetime.datetime.fromisoformat(when).timestamp()


def process_start(pid: int) -> Optional[str]:
  """When process `pid` started (clock ticks since boot, Linux), or None if unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def process_runs(pid: int, started: Optional[str] = None) -> bool:
  """Process `pid` of this host is alive (not a zombie) and, if `started` is given and
  known here, is the same process (not a reused pid)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Another user's process: it runs.
  try:
    with open(f'/proc/{pid}/stat') as f:
      if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
        return False
  except (OSError, IndexError):
    pass
  current = process_start(pid)
  return not (started and current and current != started)


def stale_reason(holder: Optional[dict], host: str) -> Optional[str]:
  """Why the lock `holder` (None: unreadable) no longer holds MODEL_DIR, or None if it does."""
  if holder is None:
    return 'its lock file is unreadable'
  if holder.get('host') == host:
    if not process_runs(int(holder['pid']), holder.get('process_start')):
      return 'that process no longer runs'
    return None
  age = _age_s(holder['heartbeat'])
  if age > STALE_AFTER_S:
    return f'no heartbeat for {age / 60:.0f} minutes'
  return None


def describe(holder: dict) -> str:
  """`pid 123 on host h since 2025-01-01T10:00:00+00:00`."""
  return f'pid {holder.get("pid")} on host {holder.get("host")} since {holder.get("started")}'


class RunLock:
  """MODEL_DIR's lock, for this process: `acquire`, then `release` when the run ends."""

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self.path = checkpoints.as_path(model_dir) / LOCK_NAME
    self.local = '://' not in model_dir
    self.host = socket.gethostname()
    self.record = {'host': self.host, 'pid': os.getpid(),
                   'process_start': process_start(os.getpid()), 'started': _now(),
                   'heartbeat': _now(), 'token': uuid.uuid4().hex}
    self.stop = threading.Event()
    self.beating: Optional[threading.Thread] = None

  def acquire(self) -> None:
    """Takes the lock (taking over a stale one, with a line on stderr), or raises
    `LockRefused` naming its holder; makes MODEL_DIR if needed."""
    self._write_or_explain(f'could not create MODEL_DIR {self.model_dir}',
                           lambda: self.path.parent.mkdir(parents=True, exist_ok=True))
    for _ in range(3):
      text = self._read()
      if text is None:
        if self._write_or_explain(f'could not create the lock {self.path}', self._create):
          self.beating = threading.Thread(target=self._beat, name='run_lock', daemon=True)
          self.beating.start()
          return
        continue  # Another run made one meanwhile: look at it.
      holder = _parse(text)
      reason = stale_reason(holder, self.host)
      if reason is None:
        raise LockRefused(self._refusal(holder))
      what = f'of the train run {describe(holder)}' if holder else str(self.path)
      print(f'MODEL_DIR {self.model_dir}: taking over the stale lock {what} ({reason}).',
            file=sys.stderr, flush=True)
      if self._read() == text:
        self.path.unlink(missing_ok=True)
    raise LockRefused(f'MODEL_DIR {self.model_dir}: another train run keeps taking its lock '
                      f'{self.path}; make sure only one run uses this MODEL_DIR, then retry.')

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock if it is still this run's."""
    self.stop.set()
    if self.beating:
      self.beating.join()
    try:
      if self._owned():
        self.path.unlink(missing_ok=True)
    except OSError as e:
      print(f'MODEL_DIR {self.model_dir}: could not delete the lock {self.path} ({e}); '
            'delete it before the next run.', file=sys.stderr, flush=True)

  def _refusal(self, holder: dict) -> str:
    """The line for a lock held by a live run."""
    if holder.get('host') == self.host:
      wait = 'wait for it to end or stop it'
    else:
      wait = (f'last heartbeat {_age_s(holder["heartbeat"]):.0f} s ago; wait for it to end or '
              f'stop it (after {STALE_AFTER_S // 60} minutes without a heartbeat the lock is '
              f'stale; delete {self.path} if that run is gone)')
    return (f'MODEL_DIR {self.model_dir} is in use by another train run ({describe(holder)}; '
            f'lock {self.path}); {wait}, or choose another MODEL_DIR.')

  @staticmethod
  def _write_or_explain(what: str, write):
    """`write()`, with a failure as one line: `what`, the cause and the fix."""
    try:
      return write()
    except OSError as e:
      code, cause = write_errors.os_error_of(e) or (None, str(e))
      raise LockRefused(f'{what}: {cause}; {write_errors.fix(code)}.') from None

  def _create(self) -> bool:
    """Writes the lock, complete, if there is none; False if another run's is there."""
    text = json.dumps(self.record, indent=1) + '\n'
    if not self.local:
      if self.path.exists():
        return False
      self.path.write_text(text)
      time.sleep(SETTLE_S)
      return self._owned()
    written = self._temporary()
    try:
      written.write_text(text)
      os.link(written, self.path)  # Atomic, and fails if a lock is there.
    except FileExistsError:
      return False
    except OSError as e:
      if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
        raise
      return self._create_without_links(text)  # E.g. gcsfuse.
    finally:
      with contextlib.suppress(OSError):
        written.unlink(missing_ok=True)
    return True

  def _create_without_links(self, text: str) -> bool:
    """`_create` with O_EXCL, where the file system has no hard links."""
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, text.encode())  # One write: a reader waits while the file is empty.
    except OSError:
      os.close(fd)
      self.path.unlink(missing_ok=True)
      raise
    os.close(fd)
    return True

  def _temporary(self):
    """Where this run writes a new version of the lock before moving it in place."""
    return self.path.with_name(f'{LOCK_NAME}.{self.record["token"]}.tmp')

  def _read(self) -> Optional[str]:
    """The lock file's text, or None if there is none (a moment's wait if it is empty)."""
    for _ in range(10):
      try:
        text = self.path.read_text()
      except FileNotFoundError:
        return None
      if text:
        return text
      time.sleep(0.1)
    return text

  def _owned(self) -> bool:
    holder = _parse(self._read() or '')
    return bool(holder) and holder.get('token') == self.record['token']

  def _beat(self) -> None:
    """Rewrites the heartbeat every HEARTBEAT_S seconds until released (atomically: a
    failed write, on a full disk, keeps the lock as it was)."""
    while not self.stop.wait(HEARTBEAT_S):
      try:
        if not self._owned():
          print(f'MODEL_DIR {self.model_dir}: another run took over the lock {self.path}.',
                file=sys.stderr, flush=True)
          return
        self.record['heartbeat'] = _now()
        text = json.dumps(self.record, indent=1) + '\n'
        if self.local:
          self._temporary().write_text(text)
          os.replace(self._temporary(), self.path)
        else:
          self.path.write_text(text)
      except OSError:
        with contextlib.suppress(OSError):
          self._temporary().unlink(missing_ok=True)


def _parse(text: str) -> Optional[dict]:
  """The lock's record, or None if it is not one."""
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  fields = ('host', 'pid', 'started', 'heartbeat')
  if not isinstance(holder, dict) or not all(k in holder for k in fields):
    return None
  try:
    int(holder['pid']), _age_s(holder['heartbeat'])
  except (TypeError, ValueError):
    return None
  return holder


def agree(refusal: str) -> str:
  """Process 0's `refusal` ('' to go on), on every process."""
  if jax.process_count() == 1:
    return refusal
  encoded = refusal.encode()[:_MESSAGE_BYTES]
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  shared = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(shared.astype(np.uint8)).rstrip(b'\0').decode(errors='ignore')


@contextlib.contextmanager
def hold(model_dir: str) -> Iterator[None]:
  """MODEL_DIR's lock for this job, from process 0, until the block ends (however it
  ends); every process raises the same `LockRefused` if it cannot be had."""
  lock = RunLock(model_dir) if jax.process_index() == 0 else None
  refusal, error = '', None
  if lock:
    try:
      lock.acquire()
    except Exception as e:  # pylint: disable=broad-except  # The others must hear of any.
      refusal, error = ' '.join(str(e).split()) or type(e).__name__, e
  refusal = agree(refusal)
  if error is not None:
    raise error
  if refusal:
    raise LockRefused(refusal)
  try:
    yield
  finally:
    if lock:
      lock.release()
