"""Visible progress: a bar on a terminal, log lines otherwise, TensorBoard scalars always,
and a PNG learning curve at the end."""

import os
import sys
import time
from typing import Mapping, Sequence

import matplotlib
import tensorflow as tf
import tqdm
from etils import epath

matplotlib.use('Agg')
from matplotlib import pyplot  # pylint: disable=g-import-not-at-top,wrong-import-position

# What TensorBoard's scalar dashboard reads (as `tf.summary.scalar` writes, without needing
# the tensorboard package).
_SCALAR = tf.compat.v1.SummaryMetadata(
    plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name='scalars'))


class Progress:
  """Reports a run's steps and evaluations; only the primary process writes anything."""

  def __init__(self, model_dir: str, start_step: int, total_steps: int, batch_size: int,
               is_primary: bool = True, log_every: int = 50):
    self.model_dir = model_dir
    self.is_primary = is_primary
    self.batch_size = batch_size
    self.total_steps = total_steps
    self.log_every = log_every
    self.writers = {}
    self.losses: list[tuple[int, float]] = []
    self.evals: list[tuple[int, Mapping[str, float]]] = []
    self.bar = None
    if is_primary and sys.stderr.isatty():
      self.bar = tqdm.tqdm(initial=start_step, total=total_steps, unit='step', dynamic_ncols=True)
    self.last_step, self.last_time = start_step, time.time()

  def _write(self, kind: str, step: int, scalars: Mapping[str, float]) -> None:
    """TensorBoard scalars under MODEL_DIR/{train,eval} (tf.summary: local or gs://)."""
    if kind not in self.writers:
      self.writers[kind] = tf.summary.create_file_writer(os.path.join(self.model_dir, kind))
    with self.writers[kind].as_default(step=step):
      for name, value in scalars.items():
        tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR)

  def train_steps(self, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
    """Call with the steps run since the last call, as (step, its metrics as host floats);
    their speed is the block's: steps / seconds since the last call."""
    if not self.is_primary or not steps:
      return
    now, step = time.time(), steps[-1][0]
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    for number, metrics in steps:
      self.losses.append((number, metrics['loss']))
      self._write('train', number, {**metrics, 'steps_per_s': steps_per_s,
                                    'examples_per_s': steps_per_s * self.batch_size})
    loss = steps[-1][1]['loss']
    if self.bar:
      self.bar.set_postfix(loss=f'{loss:.4f}', refresh=False)
      self.bar.update(step - self.bar.n)
      return
    for number, metrics in steps:
      if number % self.log_every == 0 or number == self.total_steps:
        print(f'step {number}/{self.total_steps}  loss {metrics["loss"]:.4f}  '
              f'{steps_per_s:.2f} steps/s', flush=True)

  def eval_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.is_primary:
      return
    self.evals.append((step, dict(metrics)))
    self._write('eval', step, metrics)
    self.writers['eval'].flush()
    message = '  '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))
    if self.bar:
      self.bar.write(f'eval at step {step}: {message}')
    else:
      print(f'eval at step {step}: {message}', flush=True)

  def plot(self, path: epath.Path) -> None:
    """Training loss and every eval metric against the step, as a PNG."""
    names = sorted({name for _, metrics in self.evals for name in metrics})
    figure, axes = pyplot.subplots(1, 1 + len(names), figsize=(5 * (1 + len(names)), 3.5),
                                   squeeze=False)
    axes[0, 0].plot(*zip(*self.losses) if self.losses else ([], []))
    axes[0, 0].set(title='training loss', xlabel='step')
    for axis, name in zip(axes[0, 1:], names):
      points = [(step, metrics[name]) for step, metrics in self.evals if name in metrics]
      axis.plot(*zip(*points), marker='o')
      axis.set(title=name, xlabel='step')
    figure.tight_layout()
    with path.open('wb') as f:
      figure.savefig(f, format='png', dpi=100)
    pyplot.close(figure)

  def close(self) -> None:
    if self.bar:
      self.bar.close()
    for writer in self.writers.values():
      writer.close()
