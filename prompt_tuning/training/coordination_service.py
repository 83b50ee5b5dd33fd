"""A multi-process run's coordination service, in a process of its own beside process 0.

jax starts the service inside process 0, so when process 0 dies every other process loses it and
aborts at once with a native stack trace. Run beside process 0 instead, the service outlives it
long enough for the others' `distributed.ProcessWatch` to name the lost process and exit cleanly.

    python -m prompt_tuning.training.coordination_service BIND_ADDRESS NUM_PROCESSES HEARTBEAT_TIMEOUT_S
        LINGER_S

prints `ready` once it listens, then serves until its standard input says `stop` (process 0 is
shutting down normally, after every process has) or closes: process 0 is gone, and once every
process had joined (standard input said `joined`), it serves LINGER_S more seconds, for the others
to leave.

`ServiceProcess` starts it; `hosted_elsewhere` makes `jax.distributed.initialize` use it.
"""

import contextlib
import subprocess
import sys
import threading
import time
from typing import Iterator

from jax._src import distributed as jax_distributed  # jax's own initialize, minus its service.


def _runtime_module():
  """The jaxlib module whose `get_distributed_runtime_service` jax's initialize calls (its name
  differs between jax versions)."""
  for module in vars(jax_distributed).values():
    if hasattr(module, 'get_distributed_runtime_service'):
      return module
  raise RuntimeError('this jax version starts its coordination service in a way prompt_tuning '
                     'does not know; run without --coordinator_address or use jax 0.10-0.11.')


class ServiceProcess:
  """The service's process, started by process 0 before `jax.distributed.initialize`."""

  def __init__(self, bind_address: str, num_processes: int, heartbeat_timeout_s: int,
               linger_s: float, start_timeout_s: float = 120):
    self.process = subprocess.Popen(
        [sys.executable, '-m', __name__, bind_address, str(num_processes),
         str(heartbeat_timeout_s), str(linger_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # A Ctrl-C meant for process 0 must not end it before the others.
    ready = []
    reader = threading.Thread(target=lambda: ready.append(self.process.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(start_timeout_s)
    if not ready or ready[0].strip() != 'ready':
      self.process.kill()
      said = self.process.communicate()[1].strip().splitlines()
      reason = said[-1] if said else f'it ended with status {self.process.returncode}'
      raise RuntimeError(f'could not start the coordination service on {bind_address} '
                         f'({reason}); is another run using that port?')

  def _say(self, line: str) -> None:
    with contextlib.suppress(OSError):
      self.process.stdin.write(line + '\n')
      self.process.stdin.flush()

  def joined(self) -> None:
    """Every process has joined: should process 0 go, the service stays for the others."""
    self._say('joined')

  def shutdown(self) -> None:
    """Stops the service: every process has shut its client down (jax's exit hook)."""
    self._say('stop')
    try:
      self.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self.process.kill()


@contextlib.contextmanager
def hosted_elsewhere(service: ServiceProcess) -> Iterator[None]:
  """Within it, `jax.distributed.initialize` on process 0 uses `service` instead of starting
  its own (jax's exit hook then calls `service.shutdown()`)."""
  module = _runtime_module()
  started_by_jax = module.get_distributed_runtime_service
  module.get_distributed_runtime_service = lambda *args, **kwargs: service
  try:
    yield
  finally:
    module.get_distributed_runtime_service = started_by_jax


def serve(bind_address: str, num_processes: int, heartbeat_timeout_s: int,
          linger_s: float) -> None:
  """Runs the service until standard input says `stop`, or closes (see the module docstring)."""
  service = _runtime_module().get_distributed_runtime_service(
      bind_address, num_processes, heartbeat_timeout=heartbeat_timeout_s)
  print('ready', flush=True)
  joined = False
  for line in sys.stdin:
    if line.strip() == 'stop':
      break
    joined = joined or line.strip() == 'joined'
  else:  # Closed without `stop`: process 0 is gone.
    if joined:
      time.sleep(linger_s)
  service.shutdown()


if __name__ == '__main__':
  serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
