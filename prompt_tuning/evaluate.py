r"""Evaluates a run's newest checkpoint on a seqio task (its initial prompt only when asked:
`--gin.USE_INITIAL_PROMPT=True`).

    python -m prompt_tuning.evaluate \
      --gin_file=models/t5_1_1_base.gin --gin_file=prompts/uniform.gin \
      --gin_file=runs/prompt_finetune.gin --gin_file=runs/prompt_eval.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'my_task'"

Prints the metrics and writes them to MODEL_DIR/eval/metrics_<step>.json and TensorBoard.
"""

import json

import gin
import jax

from prompt_tuning import checkpoints
from prompt_tuning import data
from prompt_tuning import evaluation
from prompt_tuning import gin_config
from prompt_tuning import partitioning
from prompt_tuning import preflight
from prompt_tuning import progress
from prompt_tuning import runs


def prepare_for_eval(setup: runs.RunSetup, eval_data: evaluation.EvalConfig,
                     use_initial_prompt: bool = False):
  """(prepared run, evaluator) for the newest checkpoint in MODEL_DIR. Refuses, before
  loading anything, a MODEL_DIR without a checkpoint unless `use_initial_prompt`; prints
  which step is used."""
  data.import_task_modules(setup.task_modules)
  preflight.check_feature_lengths(eval_data.task_feature_lengths)
  latest = checkpoints.RunCheckpoints(setup.model_dir).latest_step()
  if latest is None and not use_initial_prompt:
    raise ValueError(f'MODEL_DIR {setup.model_dir} has no checkpoint, so no trained prompt: '
                     'check MODEL_DIR or train first; to use the initial prompt on purpose '
                     '(e.g. one from prompts/from_file.gin), pass --gin.USE_INITIAL_PROMPT=True.')
  shapes = runs.batch_shapes(eval_data.task_feature_lengths, eval_data.batch_size)
  run = runs.prepare(setup, shapes, checkpoints.CheckpointConfig())
  evaluator = evaluation.Evaluator(eval_data, setup.model, partitioning.batch_sharding(run.mesh))
  if jax.process_index() == 0:
    print(f'using step {latest} of {setup.model_dir}' if latest is not None else
          'using the initial prompt (step 0, untrained: USE_INITIAL_PROMPT=True)', flush=True)
  return run, evaluator


@gin.configurable
def evaluate(setup: runs.RunSetup = gin.REQUIRED,
             eval_data: evaluation.EvalConfig = gin.REQUIRED,
             use_initial_prompt: bool = False) -> dict[str, float]:
  """Evaluates MODEL_DIR's newest checkpoint; `use_initial_prompt` (USE_INITIAL_PROMPT)
  allows a MODEL_DIR without one (the prompt initialiser's prompt)."""
  run, evaluator = prepare_for_eval(setup, eval_data, use_initial_prompt)
  step = int(run.state.step)
  metrics = evaluator.evaluate(run.state.trainable, run.frozen, step)
  is_primary = jax.process_index() == 0
  report = progress.Progress(setup.model_dir, step, step, eval_data.batch_size, is_primary)
  report.eval_metrics(step, metrics)
  report.close()
  if is_primary:
    directory = checkpoints.as_path(setup.model_dir) / 'eval'
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f'metrics_{step}.json').write_text(json.dumps(metrics, indent=1))
  return metrics


if __name__ == '__main__':
  from prompt_tuning import evaluate as evaluate_lib  # The module gin configures.
  gin_config.run_configured(evaluate_lib.evaluate)
