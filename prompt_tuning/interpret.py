r"""What a trained prompt looks like in the frozen model's vocabulary (the paper's §7).

    python -m prompt_tuning.interpret --gin_file=models/demo_t5.gin \
      --prompt=/tmp/prompt_tuning_demo --checkpoint=prompt_tuning/assets/demo/params \
      --task=demo_sentiment --module=tasks.demo [--step=N] [--top_k=5] \
      [--initial_prompt=init.npy] [--output_dir=DIR]

`--prompt` is a MODEL_DIR (its newest checkpoint, or `--step`), a `.npy` prompt `[P, E]` or
a PEFT adapter directory; `--checkpoint` is the frozen model's INITIAL_CHECKPOINT_PATH (any
kind), read as the gin model describes it. For each prompt position this prints its `--top_k`
nearest tokens by cosine similarity to the rows of `token_embedder/embedding` `[V, E]`, marks
label sub-tokens with `*`, counts the positions next to a class label and how far each moved
from its initialisation (a MODEL_DIR's `initial_prompt.npy`, which train writes, or
`--initial_prompt`); then
it writes `interpret.png` to `--output_dir` (default: the MODEL_DIR or adapter directory, or
the `.npy` file's folder). `--step` and `--checkpoint` are export's flags, `--module`
show_task's, with the same meaning.
"""

import os
from typing import Collection, Sequence

from absl import flags
import jax
import matplotlib
import numpy as np
import sentencepiece
import tokenizers

from prompt_tuning import export
from prompt_tuning import gin_config
from prompt_tuning.formats import initial_checkpoint
from prompt_tuning.formats import prompt_formats
from prompt_tuning.inference import labels
from prompt_tuning.inference import prompt_bank
from prompt_tuning.model import models
from prompt_tuning.training import checkpoints
from prompt_tuning import show_task  # pylint: disable=unused-import  # Defines --module.

matplotlib.use('Agg')
from matplotlib import pyplot  # pylint: disable=g-import-not-at-top,wrong-import-position

_TOP_K = flags.DEFINE_integer('top_k', 5, 'Nearest tokens shown per prompt position.')
_VOCABULARY = flags.DEFINE_string(
    'vocabulary', None, "The model's SentencePiece file or Hugging Face directory; default: "
    "--task's targets'.")
_LABELS = flags.DEFINE_list('labels', None, "Label words; default: --task's registered ones.")
_TASK = flags.DEFINE_string('task', None, 'A registered task (its vocabulary and label words).')
_INITIAL_PROMPT = flags.DEFINE_string('initial_prompt', None,
                                      'The prompt before training (.npy), to measure movement.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where interpret.png goes.')
EPSILON = 1e-12


def _unit(rows: np.ndarray) -> np.ndarray:
  rows = np.asarray(rows, np.float32)
  return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), EPSILON)


def nearest_tokens(prompt: np.ndarray, embeddings: np.ndarray, top_k: int,
                   excluded_ids: Collection[int] = ()) -> tuple[np.ndarray, np.ndarray]:
  """The `top_k` rows of `embeddings` [V, E] most cosine-similar to each row of `prompt`
  [P, E], never one of `excluded_ids`: (ids [P, k], similarities [P, k]), best first."""
  allowed = embeddings.shape[0] - len(set(excluded_ids))
  if not 1 <= top_k <= allowed:
    raise ValueError(f'--top_k={top_k} must be between 1 and {allowed} (the tokens not '
                     'excluded).')
  similarity = _unit(prompt) @ _unit(embeddings).T
  similarity[:, list(excluded_ids)] = -np.inf
  ids = np.argsort(-similarity, axis=1, kind='stable')[:, :top_k]
  return ids, np.take_along_axis(similarity, ids, axis=1)


def label_positions(neighbour_ids: np.ndarray, label_token_ids: Collection[int]) -> np.ndarray:
  """[P] bool: position p counts when one of its neighbours `neighbour_ids[p]` ([P, k]) is a
  sub-token of a label word, i.e. one of the ids the vocabulary encodes any label word to
  (`label_token_ids`: every piece of a label that tokenises to several)."""
  return np.isin(neighbour_ids, list(label_token_ids)).any(axis=1)


def movement(trained: np.ndarray, initial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per position of `trained` and `initial` [P, E]: (cosine similarity [P], L2 distance [P])
  between the trained row and its initial row."""
  if trained.shape != initial.shape:
    raise ValueError(f'--initial_prompt has shape {initial.shape} but the prompt has '
                     f'{trained.shape}; pass the initial prompt of this run.')
  cosine = (_unit(trained) * _unit(initial)).sum(axis=1)
  return cosine, np.linalg.norm(np.asarray(trained, np.float32) - initial, axis=1)


def tokenizer_of(vocabulary) -> sentencepiece.SentencePieceProcessor | tokenizers.Tokenizer:
  """The tokenizer behind a vocabulary (seqio's or ours: `.tokenizer`, or itself)."""
  tokenizer = getattr(vocabulary, 'tokenizer', vocabulary)
  if not isinstance(tokenizer, (sentencepiece.SentencePieceProcessor, tokenizers.Tokenizer)):
    raise ValueError(f'{type(vocabulary).__name__} is neither a SentencePiece nor a Hugging Face '
                     'vocabulary; pass --vocabulary.')
  return tokenizer


def piece(vocabulary, token_id: int) -> str:
  """The text of token `token_id` as the tokenizer stores it (`▁good`, `Ġgood`)."""
  tokenizer = tokenizer_of(vocabulary)
  if isinstance(tokenizer, tokenizers.Tokenizer):
    return tokenizer.id_to_token(token_id) or ''
  return tokenizer.id_to_piece(token_id)


def excluded_ids(vocabulary, rows: int) -> list[int]:
  """Ids that are no word: the rows past the vocabulary (T5 pads its table to 128s), and
  for SentencePiece padding 0, EOS 1, other control and unknown pieces and sentinels
  (`<extra_id_*>`), for a Hugging Face tokenizer its special tokens (`<|begin_of_text|>`;
  there id 0 is a word)."""
  tokenizer = tokenizer_of(vocabulary)
  if isinstance(tokenizer, tokenizers.Tokenizer):
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    special = {i for i, added in tokenizer.get_added_tokens_decoder().items() if added.special}
  else:
    size = tokenizer.get_piece_size()
    special = {i for i in range(size) if tokenizer.is_control(i) or tokenizer.is_unknown(i)
               or '<extra_id_' in tokenizer.id_to_piece(i)} | {0, 1}
  if size > rows:
    raise ValueError(f'the vocabulary has {size} pieces but the embedding table {rows} rows; '
                     "pass the model's own vocabulary.")
  return sorted(special | set(range(size, rows)))


def load_prompt(path: str, step: int | None) -> tuple[np.ndarray, str]:
  """(the prompt [P, E] at `path`, the folder its PNG goes to by default)."""
  where = checkpoints.as_path(path)
  if (where / 'checkpoints').is_dir():
    return np.asarray(prompt_bank.run_prompt(path, step), np.float32), path
  if (where / prompt_formats.CONFIG).exists():
    prompt, folder = prompt_formats.load_peft(path), path
  elif where.is_file():
    prompt, folder = prompt_formats.load_npy(path), os.path.dirname(os.path.abspath(path))
  else:
    raise FileNotFoundError(f'--prompt {path} is no MODEL_DIR (checkpoints/), .npy file or PEFT '
                            'adapter directory (adapter_config.json).')
  if step is not None:
    raise ValueError('--step picks a checkpoint of a MODEL_DIR; drop it for this --prompt.')
  return np.asarray(prompt, np.float32), folder


def initial_prompt_of(path: str) -> str | None:
  """MODEL_DIR/initial_prompt.npy, where `train` keeps the prompt it started from, if `path`
  is a run directory that has it."""
  initial = os.path.join(path, prompt_bank.INITIAL_PROMPT)
  return initial if checkpoints.as_path(initial).is_file() else None


def embedding_table(checkpoint: str, width: int) -> np.ndarray:
  """`token_embedder/embedding` [V, E] of the gin model's frozen weights at `checkpoint`
  (read on one device), once the prompt's `width` is known to be E."""
  abstract = export.frozen_on_one_device(models.build_model())
  model_width = abstract['token_embedder']['embedding'].shape[1]
  if width != model_width:
    raise ValueError(f'the prompt is {width} wide but the gin model embeds in {model_width} '
                     '(emb_dim); pass the gin file of the model the prompt was trained for.')
  params = initial_checkpoint.load_params(checkpoint, abstract)
  return np.asarray(jax.device_get(params['token_embedder']['embedding']), np.float32)


def vocabulary_and_labels(path: str | None, task: str | None, modules: Sequence[str],
                          words: Sequence[str] | None):
  """(the vocabulary: `path` (a SentencePiece model or a Hugging Face directory), else
  `task`'s targets vocabulary; the label words: `words`, else `task`'s registered ones,
  else ())."""
  if not path and not task:
    raise ValueError("pass --vocabulary=<the model's sentencepiece.model or Hugging Face "
                     'directory>, or --task=NAME (--module=MODULE) to use its targets '
                     'vocabulary.')
  if path and not os.path.exists(path):
    raise FileNotFoundError(f'--vocabulary {path} does not exist; pass a SentencePiece .model '
                            'or a Hugging Face directory.')
  vocabulary = labels.label_vocabulary(path, task, modules)  # Imports the task's modules.
  tokenizer_of(vocabulary)
  return vocabulary, tuple(words or (task and labels.labels_of(task)) or ())


def table(pieces: list[list[str]], similarity: np.ndarray,
          moved: tuple[np.ndarray, np.ndarray] | None) -> str:
  """One line per position: its neighbours' pieces [P][k] with their similarities [P, k],
  then (given) the (cosine [P], L2 [P]) it moved from its initialisation."""
  lines = ['position  nearest tokens (cosine similarity)' +
           ('  |  moved: cosine, L2' if moved else '')]
  for p, row in enumerate(pieces):
    line = '  '.join(f'{piece} {value:.3f}' for piece, value in zip(row, similarity[p]))
    lines.append(f'{p:8d}  {line}' + (f'  |  {moved[0][p]:.3f}, {moved[1][p]:.3f}'
                                      if moved else ''))
  return '\n'.join(lines)


def plot(path: str, pieces: list[list[str]], similarity: np.ndarray,
         distance: np.ndarray | None) -> None:
  """A PNG: the top-k similarities [P, k] as a heatmap annotated with the token pieces, and
  (given) each position's L2 distance [P] from its initialisation as bars."""
  length, top_k = similarity.shape
  columns = 1 if distance is None else 2
  figure, axes = pyplot.subplots(1, columns, figsize=(1.6 * top_k + 3 * columns, 1 + 0.4 * length),
                                 squeeze=False, width_ratios=[top_k, 2][:columns])
  image = axes[0, 0].imshow(similarity, cmap='viridis', vmin=-1, vmax=1, aspect='auto')
  for (p, j), piece in np.ndenumerate(np.asarray(pieces, object)):
    axes[0, 0].text(j, p, f'{piece}\n{similarity[p, j]:.2f}', ha='center', va='center',
                    fontsize=7, color='white' if similarity[p, j] < 0.5 else 'black')
  axes[0, 0].set(title='nearest tokens (cosine similarity)', xlabel='rank', ylabel='position',
                 xticks=range(top_k), yticks=range(length))
  figure.colorbar(image, ax=axes[0, 0])
  if distance is not None:
    axes[0, 1].barh(range(length), distance)
    axes[0, 1].set(title='L2 distance from init', ylim=(length - 0.5, -0.5), yticks=range(length))
  figure.tight_layout()
  with checkpoints.as_path(path).open('wb') as f:
    figure.savefig(f, format='png', dpi=100)
  pyplot.close(figure)


def main(argv):
  del argv
  if len(prompt_bank.PROMPT_FLAG.value) != 1:
    raise ValueError('pass one --prompt=MODEL_DIR, a prompt .npy file or a PEFT adapter '
                     'directory.')
  prompt_path = prompt_bank.PROMPT_FLAG.value[0]
  if not flags.FLAGS.gin_file or not flags.FLAGS.checkpoint:
    raise ValueError('pass the frozen model: --gin_file=models/<model>.gin and '
                     '--checkpoint=<its INITIAL_CHECKPOINT_PATH>.')
  prompt, folder = load_prompt(prompt_path, flags.FLAGS.step)
  initial = _INITIAL_PROMPT.value or initial_prompt_of(prompt_path)
  moved = movement(prompt, prompt_formats.load_npy(initial)) if initial else None
  gin_config.parse_flags()
  vocabulary, words = vocabulary_and_labels(_VOCABULARY.value, _TASK.value, flags.FLAGS.module,
                                            _LABELS.value)
  embeddings = embedding_table(flags.FLAGS.checkpoint, prompt.shape[1])
  excluded = excluded_ids(vocabulary, embeddings.shape[0])
  ids, similarity = nearest_tokens(prompt, embeddings, _TOP_K.value, excluded)
  label_ids = {i for word in words for i in vocabulary.encode(word)} - set(excluded)
  pieces = [[piece(vocabulary, int(i)) + ('*' if i in label_ids else '') for i in row]
            for row in ids]
  print(f'prompt {prompt_path}: {prompt.shape[0]} positions × {prompt.shape[1]}; '
        f'{len(excluded)} of {embeddings.shape[0]} ids excluded (special tokens, rows past the '
        'vocabulary)')
  print(table(pieces, similarity, moved))
  if words:
    count = int(label_positions(ids, label_ids).sum())
    print(f'positions with a class label among their top {_TOP_K.value}: {count} of '
          f'{prompt.shape[0]} (labels: {", ".join(words)}; * marks a label sub-token)')
  else:
    print('class labels: none (pass --labels=a,b, or --task with registered label words)')
  output_dir = _OUTPUT_DIR.value or folder
  checkpoints.as_path(output_dir).mkdir(parents=True, exist_ok=True)
  path = os.path.join(output_dir, 'interpret.png')
  plot(path, pieces, similarity, None if moved is None else moved[1])
  print(f'wrote {path}')


if __name__ == '__main__':
  gin_config.run(main)
