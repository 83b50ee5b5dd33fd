r"""Writes a run's predictions on a seqio split as JSON lines.

    python -m prompt_tuning.infer \
      --gin_file=models/t5_1_1_base.gin --gin_file=prompts/uniform.gin \
      --gin_file=runs/prompt_finetune.gin --gin_file=runs/prompt_infer.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'my_task'"

Each line of MODEL_DIR/inference/<task>-<split>-<step>.jsonl is
{"task", "inputs", "targets", "prediction"}.
"""

import json

import gin
import jax

from prompt_tuning import checkpoints
from prompt_tuning import evaluation
from prompt_tuning import evaluate
from prompt_tuning import gin_config
from prompt_tuning import runs


@gin.configurable
def infer(setup: runs.RunSetup = gin.REQUIRED,
          eval_data: evaluation.EvalConfig = gin.REQUIRED,
          use_initial_prompt: bool = False) -> str:
  """Returns the path of the JSONL file written; `use_initial_prompt` as in `evaluate`."""
  run, evaluator = evaluate.prepare_for_eval(setup, eval_data, use_initial_prompt)
  directory = checkpoints.as_path(setup.model_dir) / 'inference'
  path = directory / (f'{eval_data.mixture_or_task_name}-{eval_data.split}-'
                      f'{int(run.state.step)}.jsonl')
  records = list(evaluator.predictions(run.state.trainable, run.frozen))  # Every process.
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(record) + '\n' for record in records))
    print(f'wrote {path}')
  return str(path)


if __name__ == '__main__':
  from prompt_tuning import infer as infer_lib  # The module gin files configure, not __main__.
  gin_config.run_configured(infer_lib.infer)
