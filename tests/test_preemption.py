"""Preemption, as on a spot VM: SIGTERM → a checkpoint and a clean stop; the next launch of
the same command resumes and ends where an uninterrupted run ends."""

import os
import re
import signal
import subprocess
import time

import numpy as np

import cli
from prompt_tuning.training import preemption


def _start(model_dir, *args):
  command = cli.command('train', None, f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=8',
                        '--gin.CHECKPOINT_PERIOD=100', '--gin.train.train.eval_data=None', *args)
  return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=cli.environment())


def test_sigterm_saves_a_checkpoint_and_the_next_launch_resumes(tmp_path):
  whole, interrupted = tmp_path / 'whole', tmp_path / 'interrupted'
  uninterrupted = _start(whole)
  preempted = _start(interrupted)
  deadline = time.time() + 300
  while not (interrupted / 'config.gin').exists():  # Written once SIGTERM is handled.
    assert preempted.poll() is None and time.time() < deadline, preempted.stderr.read()[-2000:]
    time.sleep(0.2)
  preempted.send_signal(signal.SIGTERM)
  _, stderr = preempted.communicate(timeout=300)

  assert preempted.returncode == preemption.EXIT_STATUS == 143, stderr[-2000:]
  message = stderr.strip().splitlines()[-1]
  match = re.fullmatch(r'preempted \(SIGTERM\) at step (\d+): checkpoint saved in .*; '
                       r'run the same command again to resume\.', message)
  assert match, stderr[-2000:]
  step = int(match[1])
  assert 1 <= step < 8
  assert os.listdir(interrupted / 'checkpoints') == [str(step)]
  assert not (interrupted / 'prompt.npy').exists()

  resumed = _start(interrupted)
  stdout, stderr = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, stderr[-2000:]
  assert f'done: steps {step} → 8' in stdout
  _, stderr = uninterrupted.communicate(timeout=300)
  assert uninterrupted.returncode == 0, stderr[-2000:]
  np.testing.assert_array_equal(np.load(interrupted / 'prompt.npy'), np.load(whole / 'prompt.npy'))
