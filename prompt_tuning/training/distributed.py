"""Multi-host start-up: `jax.distributed.initialize` for TPU pods and GPU/CPU clusters.

- Cloud TPU VMs (one host or a pod slice) detect themselves: no flags needed.
- GPU or CPU clusters pass t5x's flags on every host:
  `--coordinator_address=HOST:PORT --process_count=N --process_index=I`.
- Anything else is one process.

A host that never joins is a one-line error after `--initialization_timeout` seconds on
every host that did, instead of a hang.

Process 0 runs the coordination service in a process of its own beside it
(`coordination_service`), so that losing process 0 is no different from losing any other.
A host lost mid-run (killed, crashed, unplugged) is one line on every other host, which then
stops with exit status 1: `error: lost process 1 of 2 (its host stopped answering); the last
checkpoint saved is step 6 in …; relaunch every host to resume.` A collective that loses its
peer says so at once; otherwise each process's `ProcessWatch` notices within
`--heartbeat_timeout` seconds. Wrap the run in `with reporting_lost_processes():`.
"""

import atexit
import contextlib
import glob
import importlib.util
import os
import re
import sys
import threading
import time
from typing import Callable, Iterator, NoReturn, Optional

from absl import flags
import jax
from jax._src import distributed as jax_distributed  # Its client: no public way to reach it.

from prompt_tuning.training import coordination_service

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0, for GPU/CPU clusters (TPU pods '
    'find it themselves).')
_PROCESS_COUNT = flags.DEFINE_integer('process_count', None,
                                      'Number of processes (hosts), with --coordinator_address.')
_PROCESS_INDEX = flags.DEFINE_integer('process_index', None,
                                      "This process's index in [0, process_count).")
_INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
    'initialization_timeout', 300, 'Seconds to wait for every process to join.')
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout', 60, 'Seconds a process may stop answering before the others count it '
    'as lost and stop (one line naming it and the last checkpoint saved).')

# jax's own deadline ends the process without a message; ours comes first.
_JAX_DEADLINE_MARGIN_S = 60

# Where `ProcessWatch` keeps its state in the coordination service's key-value store.
_WATCH_KEYS = 'prompt_tuning/watch/'

# An error that says another process is gone: a collective that lost its peer (gloo on CPU), or
# the coordination service reporting a missing heartbeat.
_LOST_PEER_ERROR = re.compile(r'\bGloo\b[^:]* failed|heartbeat timeout|stopped sending '
                              r'heartbeats|task is set to ERROR', re.IGNORECASE)

_watch: Optional['ProcessWatch'] = None
_checkpoints_directory: Optional[str] = None


def on_cloud_tpu_vm() -> bool:
  """A Cloud TPU VM has TPU chips as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5 and later),
  and libtpu installed (the `tpu` extra)."""
  has_chips = bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))
  return has_chips and importlib.util.find_spec('libtpu') is not None


def jax_heartbeat_timeout(heartbeat_timeout_s: int) -> int:
  """jax's own heartbeat timeout for ours: jax may count a silent process as dead after half
  of it, and then aborts every process with a native stack trace, so ours must come first."""
  return 3 * heartbeat_timeout_s + 30


def initialize(coordinator_address: Optional[str] = None, process_count: Optional[int] = None,
               process_index: Optional[int] = None, timeout_s: int = 300,
               heartbeat_timeout_s: int = 60) -> None:
  """Joins this process to the others (see the module docstring) and starts watching them;
  call before any other JAX call."""
  if heartbeat_timeout_s < 1:
    raise ValueError(f'--heartbeat_timeout={heartbeat_timeout_s} must be at least 1 (seconds).')
  if coordinator_address is None:
    if process_count not in (None, 1) or process_index not in (None, 0):
      raise ValueError('--process_count/--process_index need --coordinator_address=HOST:PORT '
                       '(the address of process 0).')
    if not on_cloud_tpu_vm():
      return
    where = 'the TPU pod'
  else:
    if process_count is None or process_index is None:
      raise ValueError('--coordinator_address needs --process_count and --process_index on '
                       'every host.')
    if not 0 <= process_index < process_count:
      raise ValueError(f'--process_index={process_index} is not in [0, {process_count}).')
    where = f'the coordinator at {coordinator_address} ({process_count} processes)'

  joined = threading.Event()

  def give_up():
    if not joined.wait(timeout_s):
      sys.stderr.write(
          f'error: not every process joined {where} within {timeout_s} s; start the same '
          'command on every host (each with its own --process_index) or raise '
          '--initialization_timeout.\n')
      sys.stderr.flush()
      os._exit(1)  # pylint: disable=protected-access  # The join blocks the main thread.

  jax_timeout = jax_heartbeat_timeout(heartbeat_timeout_s)
  service = None
  if coordinator_address is not None and process_index == 0:
    # Beside process 0, not in it: its loss is then one line on the others, not an abort.
    service = coordination_service.ServiceProcess(
        bind_address(coordinator_address), process_count, jax_timeout,
        linger_s=2 * heartbeat_timeout_s + 10)
  threading.Thread(target=give_up, daemon=True).start()
  with coordination_service.hosted_elsewhere(service) if service else contextlib.nullcontext():
    jax.distributed.initialize(coordinator_address, process_count, process_index,
                               initialization_timeout=timeout_s + _JAX_DEADLINE_MARGIN_S,
                               heartbeat_timeout_seconds=jax_timeout)
  joined.set()
  if service:
    service.joined()
  start_watch(heartbeat_timeout_s)


def bind_address(coordinator_address: str) -> str:
  """Where the coordination service listens: every interface on the coordinator's port, as
  jax's own service does (JAX_COORDINATOR_BIND_ADDRESS overrides it there too)."""
  return os.environ.get('JAX_COORDINATOR_BIND_ADDRESS',
                        '[::]:' + coordinator_address.rsplit(':', 1)[1])


def initialize_from_flags() -> None:
  """`initialize` with the command-line flags."""
  initialize(_COORDINATOR_ADDRESS.value, _PROCESS_COUNT.value, _PROCESS_INDEX.value,
             _INITIALIZATION_TIMEOUT.value, _HEARTBEAT_TIMEOUT.value)


def start_watch(timeout_s: float) -> None:
  """Starts this process's `ProcessWatch` when it joined others (nothing for one process)."""
  global _watch
  state = jax_distributed.global_state
  client, count = getattr(state, 'client', None), getattr(state, 'num_processes', 1) or 1
  if client is None or count < 2:
    return
  _watch = ProcessWatch(client, state.process_id, count, timeout_s)
  _watch.start()
  atexit.register(_watch.stop)  # Before jax's own exit hook shuts the client down.


def note_checkpoints(directory: str) -> None:
  """Tells the lost-process message where this run saves its checkpoints (call on each save)."""
  global _checkpoints_directory
  _checkpoints_directory = str(directory)


@contextlib.contextmanager
def reporting_lost_processes() -> Iterator[None]:
  """Around a multi-host run: an error saying another process is gone ends this one with the
  one-line message (`ProcessWatch.lost`) instead of a traceback; leaving normally tells the
  others this process is done, so they do not wait for it."""
  watch = _watch
  if watch is None:
    yield
    return
  try:
    yield
  except BaseException as e:
    if is_lost_process_error(e):
      watch.lost(None)
    watch.stop()  # The others count this process as lost: its own error message says why.
    raise
  watch.finish()


def is_lost_process_error(error: Optional[BaseException]) -> bool:
  """Whether `error`, or an error it was raised from, says another process is gone."""
  seen = set()
  while error is not None and id(error) not in seen:
    if _LOST_PEER_ERROR.search(str(error)):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


def lost_message(processes: Optional[list[int]], count: int,
                 checkpoints_directory: Optional[str]) -> str:
  """The one line every surviving process prints: who was lost (`None`: not known), the last
  checkpoint saved, and what to do."""
  if not processes:
    who = 'another process (its host stopped answering)'
  elif len(processes) == 1:
    who = f'process {processes[0]} of {count} (its host stopped answering)'
  else:
    who = (f'processes {", ".join(map(str, processes))} of {count} (their hosts stopped '
           'answering)')
  return f'error: lost {who}; {saved_checkpoint_text(checkpoints_directory)}.'


def saved_checkpoint_text(directory: Optional[str]) -> str:
  """Which checkpoint a relaunch resumes from: the newest finalized one in `directory` (an
  unfinished save does not count), and the advice to relaunch."""
  if directory is None:
    return 'nothing was saved since this launch; relaunch every host to resume'
  try:
    from orbax.checkpoint import utils  # pylint: disable=g-import-not-at-top  # Heavy; rare.
    steps = utils.checkpoint_steps(directory)
  except Exception:  # pylint: disable=broad-except  # The message must come out regardless.
    return f'the checkpoints saved are in {directory}; relaunch every host to resume'
  if not steps:
    return f'no checkpoint is saved in {directory} yet; relaunch every host to start over'
  return (f'the last checkpoint saved is step {max(steps)} in {directory}; relaunch every host '
          'to resume')


class ProcessWatch:
  """Notices a lost process sooner than jax does, and ends this one with one line.

  A thread of each process bumps its own counter (a "beat") in the coordination service's
  key-value store every `interval_s` and reads everyone's: a process whose beat stays the same
  for `timeout_s` is lost (its host died or hangs). One that finished (`finish`) or is leaving
  after a loss does not count. A coordination service that stops answering is process 0 lost.
  """

  def __init__(self, client, index: int, count: int, timeout_s: float,
               clock: Callable[[], float] = time.monotonic,
               exit_process: Callable[[int], None] = os._exit):  # pylint: disable=protected-access
    self.client, self.index, self.count, self.timeout_s = client, index, count, timeout_s
    self.interval_s = min(max(timeout_s / 10, 0.5), 5.0)
    self.clock, self.exit_process = clock, exit_process
    self.beats = {}  # process -> (its last beat seen, when that beat changed)
    self.unreachable_since = None
    self.stopped = threading.Event()
    self.reporting = threading.Lock()
    self.thread = threading.Thread(target=self._run, name='ProcessWatch', daemon=True)

  def start(self) -> None:
    self.thread.start()

  def stop(self) -> None:
    """Stops beating and watching (idempotent)."""
    self.stopped.set()
    if self.thread.is_alive() and self.thread is not threading.current_thread():
      self.thread.join(timeout=2 * self.interval_s)

  def finish(self) -> None:
    """Stops, telling the others that this process is done (not lost)."""
    self._try(lambda: self.client.key_value_set(f'{_WATCH_KEYS}done/{self.index}', ''))
    self.stop()

  def _run(self) -> None:
    while not self.stopped.wait(self.interval_s):
      lost = self.check()
      if lost and not self.stopped.is_set():
        self.lost(lost)

  def _try(self, call: Callable[[], object]) -> object:
    """`call()`, or None when the coordination service does not answer."""
    try:
      return call()
    except Exception:  # pylint: disable=broad-except  # jax raises JaxRuntimeError, ValueError.
      return None

  def _states(self) -> Optional[dict[str, dict[int, str]]]:
    """Beats once; then {'beat': {process: beat}, 'done': ..., 'left': ...}, or None when the
    coordination service does not answer."""
    def beat_and_read():
      self.client.key_value_increment(f'{_WATCH_KEYS}beat/{self.index}', 1)
      return self.client.key_value_dir_get(_WATCH_KEYS)
    entries = self._try(beat_and_read)
    if entries is None:
      return None
    states = {'beat': {}, 'done': {}, 'left': {}}
    for key, value in entries:
      kind, _, process = key[len(_WATCH_KEYS):].partition('/')
      if kind in states and process.isdigit():
        states[kind][int(process)] = value
    return states

  def check(self) -> list[int]:
    """Beats once; returns the processes lost by now (sorted)."""
    now = self.clock()
    states = self._states()
    if states is None:
      if self.unreachable_since is None:
        self.unreachable_since = now
      return [0] if self.index and now - self.unreachable_since >= self.timeout_s else []
    self.unreachable_since = None
    lost = []
    for process, beat in states['beat'].items():
      if process == self.index or process in states['done'] or process in states['left']:
        continue
      seen = self.beats.get(process)
      if seen is None or seen[0] != beat:
        self.beats[process] = (beat, now)
      elif now - seen[1] >= self.timeout_s:
        lost.append(process)
    return sorted(lost)

  def lost(self, processes: Optional[list[int]]) -> NoReturn:
    """Ends this process with `lost_message` (once, whichever thread comes first). `None`:
    a collective failed without saying whose fault; with two processes it is the other one,
    with more this waits for the watch to name it. Process 0 leaves last: where it holds the
    coordination service itself (a TPU pod), the others would abort the moment it goes."""
    if processes is None:
      if self.count == 2:
        processes = [1 - self.index]
      else:
        time.sleep(self.timeout_s + 2 * self.interval_s)  # `_run` names it and exits meanwhile.
    self.reporting.acquire()  # Never released: this process ends below.
    if self.index == 0:
      self._wait_for_the_others(set(processes or ()))
    else:
      self._try(lambda: self.client.key_value_set(f'{_WATCH_KEYS}left/{self.index}', ''))
    sys.stdout.flush()
    sys.stderr.write(lost_message(processes, self.count, _checkpoints_directory) + '\n')
    sys.stderr.flush()
    self.exit_process(1)  # Skips jax's exit hooks, which would abort on the missing process.

  def _wait_for_the_others(self, lost: set[int]) -> None:
    """Beats until every process but the lost ones has left or finished, for a few beats at
    most."""
    deadline = self.clock() + 3 * self.interval_s + 2
    while self.clock() < deadline:
      states = self._states()
      if states is None:
        return
      gone = lost | set(states['done']) | set(states['left']) | {self.index}
      if gone >= set(range(self.count)):
        return
      time.sleep(self.interval_s / 2)
