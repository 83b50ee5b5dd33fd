"""Runs the entry points as a user would, on the tiny model and tasks: in subprocesses (`run`)
or in this process (`run_in_process`)."""

import contextlib
import dataclasses
import importlib
import io
import os
import subprocess
import sys
from typing import Sequence

from absl import flags

from paths import VOCAB_PATH
from prompt_tuning import gin_config

TESTS = os.path.dirname(os.path.abspath(__file__))
TINY_RUN = ['--gin_file=models/t5_1_1_tiny.gin', '--gin_file=prompts/class_labels.gin',
            "--gin.MIXTURE_OR_TASK_NAME='tiny_sentiment'",
            "--gin.MIXTURE_OR_TASK_MODULE='tiny_task'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", '--gin.BATCH_SIZE=8',
            '--gin.EVAL_BATCH_SIZE=16', '--gin.PROMPT_LENGTH=4',
            "--gin.CLASS_LABELS=['positive', 'negative']", f"--gin.VOCABULARY_PATH='{VOCAB_PATH}'"]


def environment(num_devices: int = 1) -> dict[str, str]:
  """The test's environment for a child process with `num_devices` CPU devices that can
  import the test task modules."""
  xla_flags = f'--xla_force_host_platform_device_count={num_devices}' if num_devices > 1 else ''
  # TensorFlow's imports in this process set TF_CPP_MIN_LOG_LEVEL=1, which a user's shell
  # does not have (and which changes what TensorFlow's C++ side logs at start-up).
  inherited = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  return {**inherited, 'PYTHONPATH': TESTS, 'XLA_FLAGS': xla_flags, 'JAX_PLATFORMS': 'cpu'}


def command(module: str, run_file: str | None, *args: str) -> list[str]:
  """`python -m prompt_tuning.<module>` on the tiny run, runs/prompt_finetune.gin plus
  `run_file`, then `args`."""
  run_files = ['runs/prompt_finetune.gin'] + ([f'runs/{run_file}'] if run_file else [])
  return [sys.executable, '-m', f'prompt_tuning.{module}', *TINY_RUN,
          *[f'--gin_file={name}' for name in run_files], *args]


def run(module: str, run_file: str | None, *args: str, check: bool = True,
        num_devices: int = 1) -> subprocess.CompletedProcess:
  result = subprocess.run(command(module, run_file, *args), capture_output=True, text=True,
                          env=environment(num_devices), timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


@dataclasses.dataclass
class Result:
  returncode: int
  stdout: str
  stderr: str


def run_in_process(module: str, run_file: str | None, *args: str,
                   base: Sequence[str] | None = None) -> Result:
  """Like `run`, in this process (no start-up cost): the gin entry point's `main` with the
  same flags and error handling, its exit status, stdout and stderr. `base` replaces the
  tiny run's flags (e.g. `['--gin_file=demo.gin']`)."""
  entry_point = importlib.import_module(f'prompt_tuning.{module}')
  argv = command(module, run_file, *args)[3:] if base is None else [*base, *args]
  return run_main_in_process(gin_config.configured_main(getattr(entry_point, module)), argv)


def run_main_in_process(main, argv: Sequence[str]) -> Result:
  """A tool's `main` run with the command line `argv` (flags only) as `gin_config.run` would
  run it: exit status, stdout and stderr."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(gin_config.rewrite_gin_args(['prog', *argv]))
  stdout, stderr = io.StringIO(), io.StringIO()
  returncode = 0
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      gin_config.with_clear_errors(main)([])
    except SystemExit as e:
      if isinstance(e.code, str):
        stderr.write(e.code + '\n')
      returncode = 1 if isinstance(e.code, str) else (e.code or 0)
  return Result(returncode, stdout.getvalue(), stderr.getvalue())
