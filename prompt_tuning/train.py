r"""Prompt tuning (or model tuning) from gin, t5x style.

    python -m prompt_tuning.train \
      --gin_file=models/t5_1_1_base.gin --gin_file=prompts/class_labels.gin \
      --gin_file=runs/prompt_finetune.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'my_task'" \
      --gin.INITIAL_CHECKPOINT_PATH="'/path/to/frozen/params'"

Resumes from the newest checkpoint in MODEL_DIR; writes checkpoints, TensorBoard logs
(`train/`, `eval/`), the gin config and, at the end, `prompt.npy` (prompt tuning) or
`params/` (model tuning). On SIGTERM (preemption) it saves a checkpoint after the current
step and exits with status 143; the same command resumes. On several hosts, start it on
each (see `distributed.py`); MODEL_DIR may be a `gs://` URL.
"""

import dataclasses
import json
import math
import os
import re
import time
from typing import Optional

import gin
import jax

from prompt_tuning import gin_config
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import labels
from prompt_tuning.inference import prompt_bank
from prompt_tuning.model import prompts
from prompt_tuning.training import checkpoints
from prompt_tuning.training import data
from prompt_tuning.training import distributed
from prompt_tuning.training import partitioning
from prompt_tuning.training import preemption
from prompt_tuning.training import preflight
from prompt_tuning.training import progress
from prompt_tuning.training import run_lock
from prompt_tuning.training import runs
from prompt_tuning.training import trainer
from prompt_tuning.training import write_errors


@gin.configurable
def train(setup: runs.RunSetup = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          train_data: data.DataConfig = gin.REQUIRED,
          eval_data: Optional[evaluation.EvalConfig] = None,
          checkpoint: checkpoints.CheckpointConfig = checkpoints.CheckpointConfig(),
          mesh: Optional[jax.sharding.Mesh] = None, log_period: int = 10) -> dict[str, float]:
  """Trains `setup`'s trainable parameters for `train_steps` steps (resuming if MODEL_DIR
  has a checkpoint); returns the last eval metrics, or raises `preemption.Preempted` after
  saving when SIGTERM came. The steps' metrics reach the log, the progress bar and
  TensorBoard every `log_period` steps (LOG_PERIOD), fetched from the device together.

  Everything that can refuse the run (task, lengths, batch size against the mesh,
  MODEL_DIR, the checkpoint to resume) is checked before the first write to MODEL_DIR.
  """
  started = time.time()
  if log_period < 1:
    raise ValueError(f'LOG_PERIOD={log_period} must be a positive number of steps.')
  train_data = dataclasses.replace(
      train_data, feature_converter=setup.model.feature_converter(train_data.pack))
  with preemption.PreemptionWatch() as watch:  # From here on, SIGTERM means: save, then stop.
    run, evaluator = prepare(setup, train_steps, train_data, eval_data, checkpoint, mesh)
    start_step = int(run.state.step)
    if start_step == train_steps and start_step:
      print(f'MODEL_DIR {setup.model_dir} already holds step {start_step} = TRAIN_STEPS: '
            'nothing to train (raise TRAIN_STEPS to continue).')
      return {}
    # One writer per MODEL_DIR until train ends; a failed write is one line naming its path.
    with run_lock.hold(setup.model_dir), write_errors.naming(setup.model_dir):
      run.checkpoints.make_directories()
      record_config(setup.model_dir, start_step)
      prompt_path = setup.model.prompt_path
      trained = checkpoints.trainable_shapes(run.state.trainable)
      if start_step == 0 and jax.process_index() == 0 and prompt_path in trained:
        # Where the prompt started: what interpret measures movement from.
        checkpoints.export_prompt(prompts.get_at(run.state.trainable, prompt_path),
                                  os.path.join(setup.model_dir, prompt_bank.INITIAL_PROMPT))
      report = progress.Progress(setup.model_dir, start_step, train_steps,
                                 train_data.batch_size, jax.process_index() == 0)
      try:
        eval_metrics = train_loop(setup.model_dir, run, train_steps, train_data, evaluator,
                                  checkpoint, report, watch, log_period)
      finally:
        run.checkpoints.close()
        report.close()
      exported = export(setup.model_dir, run, train_data.mixture_or_task_name, eval_metrics,
                        prompt_path)
      if jax.process_index() == 0:
        report.plot(checkpoints.as_path(setup.model_dir) / 'learning_curve.png')
        print(summary(setup.model_dir, exported, run, report, start_step,
                      time.time() - started))
  return eval_metrics


def prepare(setup: runs.RunSetup, train_steps: int, train_data: data.DataConfig,
            eval_data: Optional[evaluation.EvalConfig], checkpoint: checkpoints.CheckpointConfig,
            mesh: Optional[jax.sharding.Mesh]):
  """(prepared run, evaluator or None), after every check that can refuse the run; writes
  nothing."""
  if prompt_bank.flag_prompts():
    raise ValueError('--prompt is for evaluate, infer and interpret; train learns one prompt '
                     '(to start from a .npy: prompts/from_file.gin with PROMPT_FILE).')
  data.import_task_modules(setup.task_modules)
  data.check_eos(train_data.mixture_or_task_name, setup.model.eos_id)
  preflight.check_feature_lengths(train_data.task_feature_lengths)
  if eval_data:
    preflight.check_feature_lengths(eval_data.task_feature_lengths)
  data.check_packing(train_data, setup.model.module.prompt_length)
  preflight.check_writable(setup.model_dir)
  mesh = mesh or partitioning.create_mesh()
  preflight.check_batch_size(train_data.batch_size, mesh)
  run = runs.prepare(setup, setup.model.batch_shapes(train_data.task_feature_lengths,
                                                     train_data.batch_size), checkpoint, mesh)
  preflight.check_train_steps(train_steps, run.checkpoints.latest_step(), setup.model_dir)
  evaluator = eval_data and evaluation.Evaluator(eval_data, setup.model,
                                                 partitioning.batch_sharding(run.mesh))
  return run, evaluator


def record_config(model_dir: str, step: int) -> None:
  """Writes `config.gin`. A run that resumes with another configuration keeps the previous
  one as `config-<step>.gin` (what trained up to `step`) and prints what changed."""
  if jax.process_index() != 0:
    return
  path = checkpoints.as_path(model_dir) / 'config.gin'
  config = gin.config_str()
  previous = path.read_text() if path.exists() else None
  if previous is not None and previous != config:
    (checkpoints.as_path(model_dir) / f'config-{step}.gin').write_text(previous)
    changes = '; '.join(config_changes(previous, config)) or 'formatting only'
    print(f'configuration changed since step {step} (the previous one is kept as '
          f'config-{step}.gin): {changes}', flush=True)
  path.write_text(config)


def config_changes(before: str, after: str) -> list[str]:
  """`NAME: old → new` for every binding of two `gin.config_str()` texts that differs."""
  def bindings(text):
    joined = re.sub(r'\\\n\s*|\n[ \t]+', ' ', text)  # Continuation lines onto their binding.
    pairs = (line.split(' = ', 1) for line in joined.splitlines() if ' = ' in line)
    return {name.strip(): ' '.join(value.split()) for name, value in pairs}

  old, new = bindings(before), bindings(after)
  return [f'{name}: {old.get(name, "unset")} → {new.get(name, "unset")}'
          for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]


def train_loop(model_dir: str, run: runs.PreparedRun, train_steps: int,
               train_data: data.DataConfig, evaluator: Optional[evaluation.Evaluator],
               checkpoint: checkpoints.CheckpointConfig, report: progress.Progress,
               watch: preemption.PreemptionWatch, log_period: int) -> dict[str, float]:
  """Steps from the state's step to `train_steps`, evaluating and saving on schedule;
  returns the last eval metrics. Saves and raises `Preempted` once `watch` says so, and
  stops with `NonFiniteLoss` at the first step whose loss or gradient is not finite.

  The host never waits for a step: each step is dispatched, then the next batch is read and
  placed on the mesh while the device computes. The steps' metrics stay on the device and
  are fetched together every `log_period` steps, and before every evaluation and save, at
  the same steps on every host. So a non-finite step is found at most `log_period` - 1
  steps late, but always before anything is saved: no checkpoint holds a state that came
  after one. A save also writes each host's data position, so a resumed run starts
  reading where this one stopped instead of replaying every batch before.
  """
  start_step = int(run.state.step)
  position = run.checkpoints.data_position(start_step) if start_step else None
  if start_step and not position and jax.process_index() == 0:
    print(f'resuming at step {start_step} by replaying the {start_step} batches before it (no '
          f'data position saved for {jax.process_count()} host(s)).', flush=True)
  batches = data.host_batches(train_data, jax.process_index(), jax.process_count(), start_step,
                              position=position)
  place = lambda: partitioning.host_batch_to_global(run.mesh, next(batches))

  def run_eval(step):
    metrics = evaluator.evaluate(run.state.trainable, run.frozen, step)
    report.eval_metrics(step, metrics)
    return metrics

  eval_metrics = run_eval(start_step) if evaluator and start_step == 0 else {}
  pending, batch = [], place()  # (step, its metrics on the device) not yet reported.
  for step in range(start_step + 1, train_steps + 1):
    run.state, metrics = run.steps.train_step(run.state, run.frozen, batch)
    pending.append((step, metrics))
    last = step == train_steps
    evaluate_now = evaluator and (last or (evaluator.config.period and
                                           step % evaluator.config.period == 0))
    preempted = watch.reached(step)
    save_now = last or step % checkpoint.period == 0 or preempted
    if not save_now:  # A save records the data position after this step's batch: read after.
      batch = place()
    if step == start_step + 1:
      write_primary(model_dir, 'operative_config.gin', gin.operative_config_str())
    if evaluate_now or save_now or step % log_period == 0:
      report_steps(pending, run)
      report.train_steps(pending)
      pending = []
    if evaluate_now:
      eval_metrics = run_eval(step)
    if save_now:
      run.checkpoints.save_data_position(step, batches)
      save_checkpoint(run, step, eval_metrics if evaluate_now else None)
    if preempted:
      raise preemption.Preempted(f'preempted (SIGTERM) at step {step}: checkpoint saved in '
                                 f'{model_dir}; run the same command again to resume.')
    if save_now and not last:
      batch = place()
  return eval_metrics


def report_steps(pending: list, run: runs.PreparedRun) -> None:
  """Fetches the metrics of the `pending` steps [(step, metrics on the device)] in one
  transfer and puts host floats in their place; raises `NonFiniteLoss` at the first step
  that was not finite."""
  fetched = jax.device_get([metrics for _, metrics in pending])
  for index, ((step, _), metrics) in enumerate(zip(pending, fetched)):
    metrics = {name: float(value) for name, value in metrics.items()}
    if not metrics.pop('finite'):
      raise NonFiniteLoss(non_finite_message(step, metrics, run.checkpoints.latest_step()))
    pending[index] = (step, metrics)


class NonFiniteLoss(ValueError):
  """A step's loss or gradient was NaN or infinite; the state is the one before it."""


def non_finite_message(step: int, metrics: dict[str, float], saved_step: Optional[int]) -> str:
  """Which step went wrong and how, the likely causes, and what is kept."""
  loss, grad_norm = metrics['loss'], metrics['grad_norm']
  if not math.isfinite(loss):
    what = f'the loss is {loss:g} at step {step}'
  elif not math.isfinite(grad_norm):
    what = f'the gradient norm is {grad_norm:g} at step {step}'
  else:
    what = f'the update of step {step} overflows (loss {loss:g}, gradient norm {grad_norm:g})'
  rate = metrics.get('learning_rate')
  rate_text = f'LEARNING_RATE (now {rate:g})' if rate is not None else 'the learning rate'
  kept = (f'the newest checkpoint (step {saved_step}) is kept' if saved_step is not None
          else 'no checkpoint was written')
  return (f'{what}: training stopped and {kept}; lower {rate_text}, or compute in float32 '
          '(network.T5Config.dtype, FROZEN_DTYPE) if bfloat16 overflows.')


def write_primary(model_dir: str, name: str, text: str) -> None:
  """Writes MODEL_DIR/name on process 0 only."""
  if jax.process_index() == 0:
    (checkpoints.as_path(model_dir) / name).write_text(text)


def save_checkpoint(run: runs.PreparedRun, step: int, eval_metrics: Optional[dict]) -> None:
  """Saves the state after `step` (every process takes part; orbax coordinates)."""
  meta = {'step': step, 'data_position': step, 'frozen': run.frozen_record,
          'trainable_shapes': checkpoints.trainable_shapes(run.state.trainable)}
  run.checkpoints.save(run.state, meta, eval_metrics)
  distributed.note_checkpoints(run.checkpoints.directories[0])  # For a lost host's message.


def summary(model_dir: str, exported: list[str], run: runs.PreparedRun,
            report: progress.Progress, start_step: int, seconds: float) -> str:
  """What the run did, in a few lines: steps, metrics before and after, parameter counts,
  whether the frozen weights are unchanged, and where the outputs are."""
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  trainable, frozen = count(run.state.trainable), count(run.frozen)
  unchanged = checkpoints.fingerprint(run.frozen) == run.frozen_record['fingerprint']
  lines = [f'done: steps {start_step} → {int(run.state.step)} in {seconds:.0f} s '
           '(including compilation)']
  if report.evals:
    (first_step, first), (last_step, last) = report.evals[0], report.evals[-1]
    lines += [f'{name}: {first[name]:.1f} (step {first_step}) → {last[name]:.1f} '
              f'(step {last_step})' for name in sorted(last)]
  lines += [f'trainable parameters: {trainable:,}; frozen: {frozen:,} '
            f'({100 * trainable / (trainable + frozen):.4f}% trained)',
            f'frozen weights fingerprint {run.frozen_record["fingerprint"]}: '
            f'{"unchanged" if unchanged else "CHANGED"}',
            f'outputs in {model_dir}: checkpoints/, {", ".join(exported)}, learning_curve.png; '
            f'TensorBoard: tensorboard --logdir {model_dir}']
  return '\n'.join(lines)


def export(model_dir: str, run: runs.PreparedRun, task: str, eval_metrics: dict[str, float],
           prompt_path: str) -> list[str]:
  """Writes `prompt.npy` and its record `prompt.json` for a prompt (the parameter at the
  model's `prompt_path`; process 0) and `params/` (our format, every process writes its
  shards) when model weights were trained; returns the names written.

  The record says which frozen weights the prompt `[P, E]` was trained on, and for what
  (`prompt_bank` reads it): the frozen weights' fingerprint and path, the training task,
  P, E, the task's label words (or null), the step, and the last eval metrics (empty if
  none ran).
  """
  trained = checkpoints.trainable_shapes(run.state.trainable)
  exported = []
  if prompt_path in trained:
    if jax.process_index() == 0:
      checkpoints.export_prompt(prompts.get_at(run.state.trainable, prompt_path),
                                os.path.join(model_dir, 'prompt.npy'))
      length, width = trained[prompt_path]
      label_words = labels.labels_of(task)
      record = {'frozen_fingerprint': run.frozen_record['fingerprint'],
                'frozen_path': run.frozen_record['path'], 'task': task,
                'prompt_length': length, 'embed_dim': width,
                'label_words': list(label_words) if label_words else None,
                'step': int(run.state.step),
                'eval_metrics': {name: float(value) for name, value in eval_metrics.items()}}
      (checkpoints.as_path(model_dir) / prompt_bank.RECORD).write_text(json.dumps(record, indent=2))
    exported += ['prompt.npy', prompt_bank.RECORD]
  if any(path != prompt_path for path in trained):
    checkpoints.save_params(os.path.join(model_dir, 'params'),
                            trainer.merge_params(run.state.trainable, run.frozen))
    exported.append('params/')
  return exported


if __name__ == '__main__':
  from prompt_tuning import train as train_lib  # The module gin files configure, not __main__.
  gin_config.run_configured(train_lib.train)
