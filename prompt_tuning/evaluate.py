r"""Evaluates a run's newest checkpoint on a seqio task (its initial prompt only when asked:
`--gin.USE_INITIAL_PROMPT=True`), or several trained prompts of one frozen model together.

    python -m prompt_tuning.evaluate \
      --gin_file=models/t5_1_1_base.gin --gin_file=prompts/uniform.gin \
      --gin_file=runs/prompt_finetune.gin --gin_file=runs/prompt_eval.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'my_task'"

Prints the metrics and writes them to MODEL_DIR/eval/metrics_<step>.json and TensorBoard.

With `--prompt NAME=PATH[@STEP]` (repeated; or the gin macro PROMPTS), the run's gin files
give only the frozen model, and each prompt is evaluated on the task PROMPT_TASKS names for
it, else on its record's, else on MIXTURE_OR_TASK_NAME, all tasks in shared batches (`multi_prompt`); a task given several
prompts is also evaluated as their ensemble, printed as a table and drawn in
MODEL_DIR/eval/ensemble-<task>.png. The metrics go to MODEL_DIR/eval/prompts_metrics.json.
"""

import json
from types import MappingProxyType
from typing import Mapping, Sequence

import gin
import jax

from prompt_tuning import gin_config
from prompt_tuning.formats import prompt_formats
from prompt_tuning.inference import ensemble
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import multi_prompt
from prompt_tuning.inference import prompt_bank
from prompt_tuning.training import checkpoints
from prompt_tuning.training import data
from prompt_tuning.training import partitioning
from prompt_tuning.training import preflight
from prompt_tuning.training import progress
from prompt_tuning.training import runs


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
  shapes = setup.model.batch_shapes(eval_data.task_feature_lengths, eval_data.batch_size)
  run = runs.prepare(setup, shapes, checkpoints.CheckpointConfig())
  evaluator = evaluation.Evaluator(eval_data, setup.model, partitioning.batch_sharding(run.mesh))
  if jax.process_index() == 0:
    print(f'using step {latest} of {setup.model_dir}' if latest is not None else
          'using the initial prompt (step 0, untrained: USE_INITIAL_PROMPT=True)', flush=True)
  return run, evaluator


def prepare_prompts(setup: runs.RunSetup, eval_data: evaluation.EvalConfig,
                    specs: Sequence[str], allow_unverified: bool = False,
                    prompt_tasks: Mapping[str, str] = MappingProxyType({})
                    ) -> multi_prompt.MultiPromptEvaluator:
  """The frozen model of `setup` serving the prompts `specs` ('NAME=PATH[@STEP]'), each on
  the task `prompt_tasks` names for it, else its record's, else `eval_data`'s; prints which
  prompt goes to which task. Reads and writes nothing in MODEL_DIR."""
  data.import_task_modules(setup.task_modules)
  preflight.check_feature_lengths(eval_data.task_feature_lengths)
  mesh = partitioning.create_mesh()
  shapes = setup.model.batch_shapes(eval_data.task_feature_lengths, eval_data.batch_size)
  frozen, frozen_record = runs.frozen_weights(setup, shapes, mesh)
  bank = prompt_bank.PromptBank(frozen_record['fingerprint'], setup.model.module.config.emb_dim,
                                specs, allow_unverified,
                                prompt_formats.TASK_TYPES[setup.model.prompt_path])
  unknown = sorted(set(prompt_tasks) - set(bank.names))
  if unknown:
    raise ValueError(f'PROMPT_TASKS names {unknown}, which no --prompt loads; the prompts are '
                     f'{bank.names}.')
  tasks = {name: prompt_tasks.get(name) or bank.record(name)['task'] or
           eval_data.mixture_or_task_name for name in bank.names}
  if jax.process_index() == 0:
    for name in bank.names:
      record = bank.record(name)
      print(f'prompt {name}: {bank.spec(name).path} (step {record["step"]}, length '
            f'{record["prompt_length"]}) on task {tasks[name]}', flush=True)
  return multi_prompt.MultiPromptEvaluator(eval_data, setup.model.without_prompt(), frozen,
                                           partitioning.batch_sharding(mesh), bank, tasks)


def evaluate_prompts(setup: runs.RunSetup, eval_data: evaluation.EvalConfig,
                     specs: Sequence[str], allow_unverified: bool = False,
                     prompt_tasks: Mapping[str, str] = MappingProxyType({})
                     ) -> dict[str, float]:
  """`evaluate` of several prompts (see the module docstring)."""
  evaluator = prepare_prompts(setup, eval_data, specs, allow_unverified, prompt_tasks)
  metrics = evaluator.evaluate()
  if jax.process_index() == 0:
    directory = checkpoints.as_path(setup.model_dir) / 'eval'
    directory.mkdir(parents=True, exist_ok=True)
    for task, names in evaluator.task_prompts.items():
      if len(names) == 1:
        print(f'{names[0]}: ' + '  '.join(f'{key} {value:.4f}' for key, value in metrics.items()
                                          if key.startswith(f'{task}/')), flush=True)
        continue
      rows = {row: {key.split('/', 2)[2]: value for key, value in metrics.items()
                    if key.startswith(f'{task}/{row}/')}
              for row in [*names, *ensemble.SUMMARY_ROWS]}
      print(ensemble.table_text(task, rows), end='', flush=True)
      (directory / f'ensemble-{task}.md').write_text(ensemble.table_text(task, rows))
      ensemble.plot(str(directory / f'ensemble-{task}.png'), task, rows)
      print(f'wrote {directory / f"ensemble-{task}.png"}', flush=True)
    (directory / 'prompts_metrics.json').write_text(json.dumps(metrics, indent=1))
  return metrics


@gin.configurable
def evaluate(setup: runs.RunSetup = gin.REQUIRED,
             eval_data: evaluation.EvalConfig = gin.REQUIRED,
             use_initial_prompt: bool = False, prompts: Sequence[str] = (),
             allow_unverified_prompts: bool = False,
             prompt_tasks: Mapping[str, str] = MappingProxyType({})) -> dict[str, float]:
  """Evaluates MODEL_DIR's newest checkpoint; `use_initial_prompt` (USE_INITIAL_PROMPT)
  allows a MODEL_DIR without one (the prompt initialiser's prompt). With `prompts` (PROMPTS,
  plus every `--prompt`), evaluates those instead (`evaluate_prompts`), prompt NAME on task
  `prompt_tasks[NAME]` (PROMPT_TASKS) where given; `allow_unverified_prompts`
  (ALLOW_UNVERIFIED_PROMPTS) admits prompts without a record."""
  specs = [*prompts, *prompt_bank.flag_prompts()]
  if specs:
    return evaluate_prompts(setup, eval_data, specs, allow_unverified_prompts, prompt_tasks)
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
