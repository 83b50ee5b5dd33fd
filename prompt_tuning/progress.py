"""Visible progress: a bar on a terminal, log lines otherwise, TensorBoard scalars always."""

import os
import sys
import time
from typing import Mapping, Optional

import tensorboardX
import tqdm


class Progress:
  """Reports training steps; only the primary process writes anything."""

  def __init__(self, model_dir: str, start_step: int, total_steps: int, batch_size: int,
               is_primary: bool = True, log_every: int = 50):
    self.is_primary = is_primary
    self.batch_size = batch_size
    self.total_steps = total_steps
    self.log_every = log_every
    self.writer = tensorboardX.SummaryWriter(os.path.join(model_dir, 'train')) if is_primary else None
    self.eval_writer = None
    self.bar = None
    if is_primary and sys.stderr.isatty():
      self.bar = tqdm.tqdm(initial=start_step, total=total_steps, unit='step', dynamic_ncols=True)
    self.last_step, self.last_time = start_step, time.time()

  def train_step(self, step: int, metrics: Mapping[str, float]) -> None:
    """Call after `step` with that step's metrics (host floats)."""
    if not self.is_primary:
      return
    now = time.time()
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    scalars = {**metrics, 'steps_per_s': steps_per_s,
               'examples_per_s': steps_per_s * self.batch_size}
    for name, value in scalars.items():
      self.writer.add_scalar(name, value, step)
    if self.bar:
      self.bar.set_postfix(loss=f'{metrics["loss"]:.4f}', refresh=False)
      self.bar.update(step - self.bar.n)
    elif step % self.log_every == 0 or step == self.total_steps:
      print(f'step {step}/{self.total_steps}  loss {metrics["loss"]:.4f}  '
            f'{steps_per_s:.2f} steps/s', flush=True)

  def eval_metrics(self, step: int, metrics: Mapping[str, float], model_dir: str) -> None:
    if not self.is_primary:
      return
    self.eval_writer = self.eval_writer or tensorboardX.SummaryWriter(
        os.path.join(model_dir, 'eval'))
    for name, value in metrics.items():
      self.eval_writer.add_scalar(name, value, step)
    self.eval_writer.flush()
    message = '  '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))
    (self.bar.write if self.bar else print)(f'eval at step {step}: {message}')

  def close(self, summary: Optional[str] = None) -> None:
    if self.bar:
      self.bar.close()
    for writer in (self.writer, self.eval_writer):
      if writer:
        writer.close()
    if summary and self.is_primary:
      print(summary)
