"""Runs the entry points as a user would, in subprocesses, on the tiny model and tasks."""

import os
import subprocess
import sys

from paths import VOCAB_PATH

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
  return {**os.environ, 'PYTHONPATH': TESTS, 'XLA_FLAGS': xla_flags, 'JAX_PLATFORMS': 'cpu'}


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
