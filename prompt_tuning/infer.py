r"""Writes predictions as JSON lines: a run's on a seqio split, or several prompts' at once.

    python -m prompt_tuning.infer \
      --gin_file=models/t5_1_1_base.gin --gin_file=prompts/uniform.gin \
      --gin_file=runs/prompt_finetune.gin --gin_file=runs/prompt_infer.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.MIXTURE_OR_TASK_NAME="'my_task'"

Each line of MODEL_DIR/inference/<task>-<split>-<step>.jsonl is
{"task", "inputs", "targets", "prediction"}.

With `--prompt NAME=PATH[@STEP]` (repeated; or the gin macro PROMPTS) the gin files give only
the frozen model, and all prompts decode in shared batches (`multi_prompt`):
- with `--gin.INFER_INPUTS="'requests.jsonl'"`, a file of JSON lines {"task": NAME,
  "inputs": text, ...}: each line comes back with its "prediction" added, in order, in
  MODEL_DIR/inference/<file name>-predictions.jsonl;
- otherwise each prompt decodes its task's split (as in evaluate: PROMPT_TASKS, else its
  record's, else MIXTURE_OR_TASK_NAME) into MODEL_DIR/inference/prompts-<split>.jsonl, lines
  {"task": NAME, "seqio_task", "inputs", "targets", "prediction"}.
"""

import json
import os
from types import MappingProxyType
from typing import Iterable, Mapping, Optional, Sequence

import gin
import jax

from prompt_tuning import evaluate
from prompt_tuning import gin_config
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import prompt_bank
from prompt_tuning.training import checkpoints
from prompt_tuning.training import runs


def read_requests(path: str) -> list[dict]:
  """The JSON lines of `path`, each an object with a string "task" and "inputs"."""
  requests = []
  with checkpoints.as_path(path).open() as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        request = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{number} is not JSON ({e.msg}); write one object per line, '
                         'e.g. {"task": "sst2", "inputs": "a fine film"}.') from None
      if not (isinstance(request, dict) and isinstance(request.get('task'), str)
              and isinstance(request.get('inputs'), str)):
        raise ValueError(f'{path}:{number} needs a string "task" (a --prompt NAME) and a string '
                         '"inputs", e.g. {"task": "sst2", "inputs": "a fine film"}.')
      requests.append(request)
  return requests


def write_lines(path, records: Iterable[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps(record) + '\n' for record in records))
  print(f'wrote {path}')


@gin.configurable
def infer(setup: runs.RunSetup = gin.REQUIRED,
          eval_data: evaluation.EvalConfig = gin.REQUIRED,
          use_initial_prompt: bool = False, prompts: Sequence[str] = (),
          allow_unverified_prompts: bool = False,
          prompt_tasks: Mapping[str, str] = MappingProxyType({}),
          inputs_path: Optional[str] = None) -> str:
  """Returns the path of the JSONL file written; `use_initial_prompt`, `prompts` (plus every
  `--prompt`), `allow_unverified_prompts` and `prompt_tasks` as in `evaluate`; `inputs_path`
  (INFER_INPUTS): JSON lines to answer, with `prompts`."""
  directory = checkpoints.as_path(setup.model_dir) / 'inference'
  specs = [*prompts, *prompt_bank.flag_prompts()]
  if inputs_path and not specs:
    raise ValueError('INFER_INPUTS names prompts in its "task" fields: pass them with --prompt '
                     'NAME=PATH.')
  if specs:
    requests = read_requests(inputs_path) if inputs_path else None
    evaluator = evaluate.prepare_prompts(setup, eval_data, specs, allow_unverified_prompts,
                                         prompt_tasks)
    if requests is not None:
      answers = evaluator.predict_texts([(r['task'], r['inputs']) for r in requests])
      records = [{**request, 'prediction': answer} for request, answer in zip(requests, answers)]
      name = os.path.splitext(os.path.basename(inputs_path))[0] + '-predictions.jsonl'
    else:
      records, name = list(evaluator.predictions()), f'prompts-{eval_data.split}.jsonl'
  else:
    run, evaluator = evaluate.prepare_for_eval(setup, eval_data, use_initial_prompt)
    records = list(evaluator.predictions(run.state.trainable, run.frozen))  # Every process.
    name = f'{eval_data.mixture_or_task_name}-{eval_data.split}-{int(run.state.step)}.jsonl'
  if jax.process_index() == 0:
    write_lines(directory / name, records)
  return str(directory / name)


if __name__ == '__main__':
  from prompt_tuning import infer as infer_lib  # The module gin files configure, not __main__.
  gin_config.run_configured(infer_lib.infer)
