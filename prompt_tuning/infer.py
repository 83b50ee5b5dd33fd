r"""Writes a run's predictions on a seqio split as JSON lines.

    python -m prompt_tuning.infer \
      --gin_file=models/t5_1_1_base.gin --gin_file=prompts/uniform.gin \
      --gin_file=runs/prompt_finetune.gin --gin_file=runs/prompt_infer.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'my_task'"

Each line of MODEL_DIR/inference/<task>-<split>-<step>.jsonl is
{"task", "inputs", "targets", "prediction"}.
"""

import json
import os

import gin

from prompt_tuning import evaluation
from prompt_tuning import evaluate
from prompt_tuning import gin_config
from prompt_tuning import runs


@gin.configurable
def infer(setup: runs.RunSetup = gin.REQUIRED,
          eval_data: evaluation.EvalConfig = gin.REQUIRED) -> str:
  """Returns the path of the JSONL file written."""
  run, evaluator = evaluate.prepare_for_eval(setup, eval_data)
  directory = os.path.join(setup.model_dir, 'inference')
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f'{eval_data.mixture_or_task_name}-{eval_data.split}-'
                                 f'{int(run.state.step)}.jsonl')
  with open(path, 'w') as f:
    for record in evaluator.predictions(run.state.trainable, run.frozen):
      f.write(json.dumps(record) + '\n')
  print(f'wrote {path}')
  return path


def main(argv):
  del argv
  gin_config.parse_flags()
  infer()


if __name__ == '__main__':
  from prompt_tuning import infer as infer_lib  # The module gin configures.
  gin_config.run(infer_lib.main)
