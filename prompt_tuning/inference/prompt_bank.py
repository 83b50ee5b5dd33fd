"""A prompt bank: named prompts checked against one frozen model, served as one table.

    bank = prompt_bank.PromptBank(fingerprint, embed_dim,
                                  ['sst2=/runs/sst2', 'rte=/runs/rte@3000', 'cb=/adapters/cb'])
    table = bank.table()  # prompts.PromptTable: [N, P_max, E], row i holds bank.names[i].
    batch['prompt_ids'] = bank.ids(['rte', 'sst2', 'rte'])  # [B] int32.

A spec `NAME=PATH` or `NAME=PATH@STEP` names one prompt `[P, E]` and where it is:

- a run directory (MODEL_DIR): its `prompt.npy` and record `prompt.json` (`train.export`
  writes both); with `@STEP`, the prompt of checkpoint STEP, the frozen weights of its
  meta (a gs:// run loads this way) and the task and label words of `prompt.json` if
  the run has one (`run_record`);
- a `.npy` file `DIR/X.npy`, with the record `DIR/X.json` beside it if there is one;
- a PEFT prompt-tuning adapter directory, with the record `prompt.json` in it if there is one.

A record (JSON) holds `RECORD_FIELDS`: the frozen weights' fingerprint and path, the
training task, `prompt_length` P, `embed_dim` E, the task's label words, the step and the
last eval metrics. The bank refuses a prompt trained on other frozen weights (another
fingerprint) or of another width E. A prompt without a record is unverified: nothing says
which weights it fits, so it loads only with `allow_unverified=True`.
"""

import dataclasses
import json
import os
import re
from typing import Optional, Sequence

from absl import flags
import jax
import numpy as np

from prompt_tuning.formats import prompt_formats
from prompt_tuning.formats import t5x_checkpoint
from prompt_tuning.model import prompts
from prompt_tuning.training import checkpoints

PROMPT_FLAG = flags.DEFINE_multi_string(
    'prompt', [], 'A trained prompt, NAME=PATH or NAME=PATH@STEP (repeat the flag for more): '
    'PATH a run directory, a .npy file or a PEFT adapter directory (interpret: PATH alone).')
RECORD = 'prompt.json'  # The record in a run directory or a PEFT adapter directory.
INITIAL_PROMPT = 'initial_prompt.npy'  # In a run directory: the prompt before step 1 [P, E].
RECORD_FIELDS = ('frozen_fingerprint', 'frozen_path', 'task', 'prompt_length', 'embed_dim',
                 'label_words', 'step', 'eval_metrics')


def flag_prompts() -> list[str]:
  """The `--prompt` flags given; none when the entry point is called from Python."""
  return PROMPT_FLAG.value if flags.FLAGS.is_parsed() else []


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """One prompt to load: its name, where it is and, for a run directory, a checkpoint step."""
  name: str
  path: str
  step: Optional[int] = None


def parse_spec(spec: str) -> PromptSpec:
  """'NAME=PATH' or 'NAME=PATH@STEP' -> a `PromptSpec` (NAME: letters, digits, `_.-`)."""
  name, equals, location = spec.partition('=')
  path, at, step = location.rpartition('@') if '@' in location else (location, '', '')
  if not (equals and re.fullmatch(r'[\w.-]+', name) and path and (not at or step.isdigit())):
    raise ValueError(f'prompt spec {spec!r} is not NAME=PATH or NAME=PATH@STEP (NAME of letters, '
                     'digits, _ . -; STEP a checkpoint step); write e.g. sst2=/runs/sst2@300.')
  return PromptSpec(name, path, int(step) if at else None)


def load(spec: PromptSpec, allow_unverified: bool = False,
         task_type: Optional[str] = None) -> tuple[np.ndarray, dict]:
  """(the prompt [P, E] float32, its record: every field of `RECORD_FIELDS`, null where
  unknown). A prompt without a record is refused unless `allow_unverified`; with `task_type`
  (`prompt_formats.TASK_TYPES`), so is a PEFT adapter for another kind of model."""
  if spec.step is not None:
    prompt = np.asarray(run_prompt(spec.path, spec.step), np.float32)
    return prompt, _complete(run_record(spec.path, spec.step), prompt)
  if not os.path.exists(spec.path):
    raise FileNotFoundError(f'prompt {spec.name}: {spec.path} does not exist; pass a run '
                            'directory, a .npy file or a PEFT adapter (a gs:// run: PATH@STEP).')
  if os.path.isfile(os.path.join(spec.path, prompt_formats.CONFIG)):
    prompt = prompt_formats.load_peft(spec.path, task_type)
    record_path = os.path.join(spec.path, RECORD)
  elif os.path.isdir(spec.path):
    if not os.path.isfile(os.path.join(spec.path, 'prompt.npy')):
      raise FileNotFoundError(f'prompt {spec.name}: run directory {spec.path} has no prompt.npy '
                              f'(not finished?); load a checkpoint with {spec.name}='
                              f'{spec.path}@STEP.')
    prompt = prompt_formats.load_npy(os.path.join(spec.path, 'prompt.npy'))
    record_path = os.path.join(spec.path, RECORD)
  else:
    prompt = prompt_formats.load_npy(spec.path)
    record_path = os.path.splitext(spec.path)[0] + '.json'
  prompt = np.asarray(prompt, np.float32)
  if os.path.isfile(record_path):
    return prompt, _complete(_read_record(record_path, prompt), prompt)
  if not allow_unverified:
    raise ValueError(f'prompt {spec.name} ({spec.path}) has no record {record_path} naming the '
                     'frozen weights it was trained on; load its run directory or NAME=MODEL_DIR'
                     '@STEP, or pass allow_unverified=True if you know it fits.')
  return prompt, _complete({}, prompt)


def run_step(model_dir: str, step: Optional[int] = None) -> int:
  """`step` if MODEL_DIR/checkpoints has it, or (None) its newest step."""
  directory = checkpoints.as_path(model_dir) / 'checkpoints'  # Local or gs://.
  steps = sorted(int(path.name) for path in directory.iterdir()
                 if path.name.isdigit()) if directory.is_dir() else []
  if not steps:
    raise FileNotFoundError(f'MODEL_DIR {model_dir} has no checkpoints/<step>/ to export.')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ValueError(f'MODEL_DIR {model_dir} has no checkpoint at step {step}; it has {steps}.')
  return step


def run_prompt(model_dir: str, step: Optional[int] = None) -> np.ndarray:
  """The prompt [P, E] at `step` (default: the newest) of MODEL_DIR/checkpoints."""
  step = run_step(model_dir, step)
  item = str(checkpoints.as_path(model_dir) / 'checkpoints' / str(step) / 'state')
  trainable = t5x_checkpoint.orbax_tree(item)['trainable']
  if len(jax.tree.leaves(trainable)) != 1:  # A prompt-tuning run trains its prompt alone.
    raise ValueError(f'MODEL_DIR {model_dir} trained no prompt (a model-tuning run?); export its '
                     'weights with --format=hf.')
  return jax.tree.leaves(t5x_checkpoint.restore_orbax(item, 'trainable'))[0]


def run_record(model_dir: str, step: int) -> dict:
  """The record of checkpoint `step` of a run: the run's own record if it is of that step,
  else the frozen weights of the step's meta and the task and label words of the run's
  record if it has one (the eval metrics unknown)."""
  run_checkpoints = checkpoints.RunCheckpoints(model_dir)
  try:
    meta = run_checkpoints.read_meta(step)
  finally:
    run_checkpoints.close()
  path = checkpoints.as_path(model_dir) / RECORD
  final = json.loads(path.read_text()) if path.is_file() else {}
  if final.get('step') == meta['step']:
    return final  # The prompt train exported, with its eval metrics.
  return {'frozen_fingerprint': meta['frozen']['fingerprint'],
          'frozen_path': meta['frozen']['path'], 'step': meta['step'],
          'task': final.get('task'), 'label_words': final.get('label_words')}


def write_record(path: str, record: dict) -> None:
  """Writes `record` (a prompt's, see the module docstring) as JSON at `path`."""
  checkpoints.as_path(path).write_text(json.dumps(record, indent=2))


def _read_record(path: str, prompt: np.ndarray) -> dict:
  """The record at `path`, refused unless it is a JSON object with a frozen fingerprint that
  describes `prompt` [P, E]."""
  try:
    with open(path) as f:
      record = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'prompt record {path} is not JSON ({e.msg}, line {e.lineno}); rewrite it '
                     'or remove it.') from None
  if not isinstance(record, dict) or not record.get('frozen_fingerprint'):
    raise ValueError(f'prompt record {path} has no frozen_fingerprint; rewrite it with the '
                     f'fields {list(RECORD_FIELDS)} or remove it.')
  described = [record.get('prompt_length', len(prompt)), record.get('embed_dim', prompt.shape[1])]
  if described != list(prompt.shape):
    raise ValueError(f'prompt record {path} describes a {described} prompt but its prompt is '
                     f'{list(prompt.shape)}; it belongs to another prompt: rewrite or remove it.')
  return record


def _complete(record: dict, prompt: np.ndarray) -> dict:
  """`record` with every field of `RECORD_FIELDS` (null if missing) and the shape of `prompt`."""
  return {**dict.fromkeys(RECORD_FIELDS), **record, 'prompt_length': prompt.shape[0],
          'embed_dim': prompt.shape[1]}


@dataclasses.dataclass(frozen=True)
class Entry:
  """A loaded prompt: where it came from, the prompt [P, E] float32 and its record."""
  spec: PromptSpec
  prompt: np.ndarray
  record: dict


class PromptBank:
  """Named prompts [P_i, E] for the frozen weights with fingerprint `frozen_fingerprint` and
  embedding width `embed_dim` (E), in the order added: row i of `table()` is `names[i]`.
  `task_type` (`prompt_formats.TASK_TYPES` of the model's prompt path), where given, refuses
  PEFT adapters made for the other kind of model (seq2seq or decoder-only)."""

  def __init__(self, frozen_fingerprint: str, embed_dim: int,
               specs: Sequence[str | PromptSpec] = (), allow_unverified: bool = False,
               task_type: Optional[str] = None):
    self.frozen_fingerprint, self.embed_dim = frozen_fingerprint, embed_dim
    self.task_type = task_type
    self._entries: dict[str, Entry] = {}
    for spec in specs:
      self.add(spec, allow_unverified)

  def add(self, spec: str | PromptSpec, allow_unverified: bool = False) -> None:
    """Loads `spec` ('NAME=PATH', 'NAME=PATH@STEP' or a `PromptSpec`); refuses, in one line,
    a name already loaded, a prompt of other frozen weights or of another width."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.name in self._entries:
      raise ValueError(f'prompt name {spec.name} is given twice '
                       f'({self._entries[spec.name].spec.path} and {spec.path}); give each '
                       'prompt its own NAME.')
    prompt, record = load(spec, allow_unverified, self.task_type)
    fingerprint = record['frozen_fingerprint']
    if fingerprint is not None and fingerprint != self.frozen_fingerprint:
      raise ValueError(f'prompt {spec.name} ({spec.path}) was trained on frozen weights '
                       f'{fingerprint} ({record["frozen_path"]}) but these are '
                       f'{self.frozen_fingerprint}; serve it with the weights it was trained on, '
                       'or train it on these.')
    if record['embed_dim'] != self.embed_dim:
      raise ValueError(f'prompt {spec.name} ({spec.path}) has width {record["embed_dim"]} but the '
                       f'frozen model embeds in {self.embed_dim}; use a prompt of this model.')
    self._entries[spec.name] = Entry(spec, prompt, record)

  @property
  def names(self) -> list[str]:
    return list(self._entries)

  def spec(self, name: str) -> PromptSpec:
    """Where prompt `name` was loaded from."""
    self._check_known([name])
    return self._entries[name].spec

  def record(self, name: str) -> dict:
    """The record of prompt `name` (every field of `RECORD_FIELDS`, null where unknown)."""
    self._check_known([name])
    return dict(self._entries[name].record)

  def table(self) -> prompts.PromptTable:
    """All prompts as a `prompts.PromptTable`: [N, P_max, E], each left-padded to P_max."""
    if not self._entries:
      raise ValueError('the prompt bank holds no prompts; add one with add("NAME=PATH").')
    return prompts.pad_prompts([entry.prompt for entry in self._entries.values()])

  def ids(self, names: Sequence[str]) -> np.ndarray:
    """Each example's prompt name [B] -> its row of `table()`, `prompt_ids` [B] int32."""
    self._check_known(names)
    rows = {name: row for row, name in enumerate(self._entries)}
    return np.array([rows[name] for name in names], np.int32)

  def _check_known(self, names: Sequence[str]) -> None:
    unknown = sorted(set(names) - self._entries.keys())
    if unknown:
      raise ValueError(f'unknown prompt name(s) {unknown}; the bank holds {self.names}.')
