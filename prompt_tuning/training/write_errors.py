"""Failed writes to MODEL_DIR (a full disk, an exceeded quota, a read-only file system) as
one line naming the path, the cause and the fix.

- `checkpoint_save_error`: a checkpoint that could not be saved, with the newest complete
  one (`checkpoints.RunCheckpoints` raises it, after `remove_partial_saves`).
- `naming(model_dir)`: around a run's writes, turns an OS error that names no file (a write
  that failed after its file was opened: `No space left on device`) and TensorBoard's own
  errors into such a line.

Orbax logs each failed background write with a traceback before the error reaches us,
asyncio may log such a write's future as never retrieved, and tensorstore writes still in
flight then report that orbax's event loop is closed; all are dropped unless `--verbosity` is given, since the one line says it all.
"""

import contextlib
import errno
import logging
import os
import re
import sys
import traceback
from typing import Iterator, Optional

from etils import epath

# Orbax's marker for a step still being written: `<step>.orbax-checkpoint-tmp[-<time>]`.
PARTIAL_SAVE_MARKER = '.orbax-checkpoint-tmp'

_NO_SPACE = 'free space or choose another MODEL_DIR'
_NOT_WRITABLE = 'make MODEL_DIR writable or choose another MODEL_DIR'
_FIXES = {errno.ENOSPC: _NO_SPACE, errno.EDQUOT: _NO_SPACE, errno.EFBIG: _NO_SPACE,
          errno.EROFS: _NOT_WRITABLE, errno.EACCES: _NOT_WRITABLE, errno.EPERM: _NOT_WRITABLE}


class CheckpointSaveError(OSError):
  """A checkpoint could not be written; the message says where, why and what is kept."""


def fix(code: Optional[int]) -> str:
  """What to do about a failed write with this errno."""
  return _FIXES.get(code, "check MODEL_DIR's file system")


def os_error_of(error: Optional[BaseException]) -> Optional[tuple[Optional[int], str]]:
  """(errno, cause) of the OS error behind `error` (itself, what caused it, tensorstore's
  `[os_error_code='28']` inside its message, or TensorFlow's message naming the cause, e.g.
  `No space left on device`), or None when there is none."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno, error.strerror or os.strerror(error.errno)
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:
      return int(code[1]), os.strerror(int(code[1]))
    named = [known for known in _FIXES if os.strerror(known) in str(error)]  # TensorFlow's.
    if named:
      return named[0], os.strerror(named[0])
    error = error.__cause__ or error.__context__
  return None


def remove_partial_saves(directory: epath.Path) -> list[int]:
  """Deletes the half-written steps orbax left in `directory`; returns their steps."""
  steps = []
  if not directory.is_dir():
    return steps
  for path in directory.iterdir():
    if PARTIAL_SAVE_MARKER in path.name:
      path.rmtree(missing_ok=True) if path.is_dir() else path.unlink(missing_ok=True)
      head = path.name.split('.', 1)[0]
      if head.isdigit():
        steps.append(int(head))
  return steps


def checkpoint_save_error(step: Optional[int], directory: epath.Path, error: BaseException,
                          newest: Optional[int]) -> Optional[CheckpointSaveError]:
  """The one-line error for a failed save of `step` in `directory`, or None when `error`
  is not a failed write (then it is a bug to show as it is)."""
  found = os_error_of(error)
  if found is None:
    return None
  code, cause = found
  which = f'of step {step} ' if step is not None else ''
  kept = (f'the newest complete checkpoint is step {newest}' if newest is not None
          else 'no complete checkpoint was saved yet')
  return CheckpointSaveError(f'could not save the checkpoint {which}in {directory}: {cause}; '
                             f'{fix(code)}; {kept}.')


def _tensorflow_error(error: BaseException, model_dir: str) -> Optional[OSError]:
  """TensorBoard's error (a `tf.errors.OpError`) for a file in MODEL_DIR as one line."""
  if not type(error).__module__.startswith('tensorflow'):
    return None
  message = getattr(error, 'message', str(error))
  for directory in dict.fromkeys((model_dir, os.path.abspath(model_dir))):
    where = re.search(rf'({re.escape(directory)}\S*?);? ([^\n;]+)', message)
    if where:
      path, cause = where[1], where[2].strip()
      codes = [code for code in _FIXES if os.strerror(code) == cause]
      return OSError(f'could not write {path}: {cause}; {fix(codes[0] if codes else None)}.')
  return None


def _inside(path: str, model_dir: str) -> bool:
  """Whether `path` is MODEL_DIR or below it."""
  return any(path == directory or path.startswith(directory.rstrip('/') + '/')
             for directory in (model_dir, os.path.abspath(model_dir)))


@contextlib.contextmanager
def naming(model_dir: str) -> Iterator[None]:
  """Failed writes inside this block, as one line naming the path (or MODEL_DIR) and fix."""
  try:
    yield
  except CheckpointSaveError:
    raise
  except OSError as e:
    if e.filename is None and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      raise OSError(f'a write failed ({e.strerror}) while training in MODEL_DIR {model_dir}; '
                    f'{fix(e.errno)}.') from e
    if e.filename is not None and e.errno in _FIXES and _inside(str(e.filename), model_dir):
      raise OSError(f'could not write {e.filename}: {e.strerror}; {fix(e.errno)}.') from e
    raise
  except Exception as e:  # pylint: disable=broad-except  # Only TensorFlow's are changed.
    converted = _tensorflow_error(e, model_dir)
    if converted is None:
      raise
    raise converted from e


class _QuietOrbaxWriteFailures(logging.Filter):
  """Drops the error logs (with tracebacks) of orbax's failed writes, which this module
  reports in one line, unless the user asked for logs with `--verbosity`: orbax's own, and
  asyncio's `Future exception was never retrieved` for a background write of orbax's."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or _verbose():
      return True
    error = record.exc_info[1] if record.exc_info else None
    if f'{os.sep}orbax{os.sep}' not in record.pathname and not _raised_in_orbax(error):
      return True
    return os_error_of(error) is None and 'os_error_code' not in record.getMessage()


def _raised_in_orbax(error: Optional[BaseException]) -> bool:
  """Whether `error`, or an error it was raised while handling, passed through orbax."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if any(f'{os.sep}orbax{os.sep}' in frame.filename
           for frame in traceback.extract_tb(error.__traceback__)):
      return True
    error = error.__cause__ or error.__context__
  return False


def _verbose() -> bool:
  """Whether the user asked for logs (`--verbosity`): then nothing is dropped."""
  return logging.getLogger('absl').getEffectiveLevel() < logging.WARNING


def _quiet_late_callbacks(unraisable) -> None:
  """Drops the `Event loop is closed` tracebacks of tensorstore writes that finish after a
  failed save ended orbax's event loop (their results no longer matter)."""
  error = unraisable.exc_value
  frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  late = (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed' and
          any(frame.name == 'call_soon_threadsafe' for frame in frames))
  if not late or _verbose():
    _previous_unraisablehook(unraisable)


for _logger in ('absl', 'asyncio'):
  logging.getLogger(_logger).addFilter(_QuietOrbaxWriteFailures())
_previous_unraisablehook = sys.unraisablehook
sys.unraisablehook = _quiet_late_callbacks
