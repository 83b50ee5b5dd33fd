"""Multi-host start-up: `jax.distributed.initialize` for TPU pods and GPU/CPU clusters.

- Cloud TPU VMs (one host or a pod slice) detect themselves: no flags needed.
- GPU or CPU clusters pass t5x's flags on every host:
  `--coordinator_address=HOST:PORT --process_count=N --process_index=I`.
- Anything else is one process.

A host that never joins is a one-line error after `--initialization_timeout` seconds on
every host that did, instead of a hang.
"""

import glob
import importlib.util
import os
import sys
import threading
from typing import Optional

from absl import flags
import jax

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0, for GPU/CPU clusters (TPU pods '
    'find it themselves).')
_PROCESS_COUNT = flags.DEFINE_integer('process_count', None,
                                      'Number of processes (hosts), with --coordinator_address.')
_PROCESS_INDEX = flags.DEFINE_integer('process_index', None,
                                      "This process's index in [0, process_count).")
_INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
    'initialization_timeout', 300, 'Seconds to wait for every process to join.')

# jax's own deadline ends the process without a message; ours comes first.
_JAX_DEADLINE_MARGIN_S = 60


def on_cloud_tpu_vm() -> bool:
  """A Cloud TPU VM has TPU chips as /dev/accel* (v2-v4) or /dev/vfio/<n> (v5 and later),
  and libtpu installed (the `tpu` extra)."""
  has_chips = bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))
  return has_chips and importlib.util.find_spec('libtpu') is not None


def initialize(coordinator_address: Optional[str] = None, process_count: Optional[int] = None,
               process_index: Optional[int] = None, timeout_s: int = 300) -> None:
  """Joins this process to the others (see the module docstring); call before any other
  JAX call."""
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

  threading.Thread(target=give_up, daemon=True).start()
  jax.distributed.initialize(coordinator_address, process_count, process_index,
                             initialization_timeout=timeout_s + _JAX_DEADLINE_MARGIN_S)
  joined.set()


def initialize_from_flags() -> None:
  """`initialize` with the command-line flags."""
  initialize(_COORDINATOR_ADDRESS.value, _PROCESS_COUNT.value, _PROCESS_INDEX.value,
             _INITIALIZATION_TIMEOUT.value)
