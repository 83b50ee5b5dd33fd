"""Preemption: notice SIGTERM (spot / preemptible VMs get one before shutdown) so the
trainer can save a checkpoint and stop at a step boundary.

With one process, a SIGTERM handler sets a flag. With several, JAX's distributed runtime
already watches for SIGTERM; `multihost_utils.reached_preemption_sync_point` makes every
process agree on the same step to stop at.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

# The conventional exit status of a process ended by SIGTERM (128 + 15): supervisors and
# retry loops see an unfinished run and launch it again, which resumes.
EXIT_STATUS = 128 + signal.SIGTERM


class PreemptionWatch:
  """`reached(step)` is True, on every process at the same step, once a SIGTERM came."""

  def __init__(self):
    self.multiprocess = jax.process_count() > 1
    self.signalled = threading.Event()
    self.previous_handler = None
    if not self.multiprocess:
      self.previous_handler = signal.signal(signal.SIGTERM, lambda *_: self.signalled.set())

  def reached(self, step: int) -> bool:
    if self.multiprocess:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signalled.is_set()

  def __enter__(self) -> 'PreemptionWatch':
    return self

  def __exit__(self, *exc_info) -> None:
    """Gives SIGTERM back to the handler that was there before."""
    if self.previous_handler is not None:
      signal.signal(signal.SIGTERM, self.previous_handler)
      self.previous_handler = None


class Preempted(Exception):
  """Training stopped early on SIGTERM, after saving a checkpoint."""
