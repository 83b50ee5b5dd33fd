"""Gin files and flags, t5x style: `--gin_file`, `--gin.X=...`, `--gin_search_paths`,
`--tfds_data_dir`.

The repository's `gin/` folder is always searched last, so `models/t5_1_1_base.gin`
works from any directory. Gin runs start with `run_configured(fn)`; other tools with `run(main)`.
"""

import os
import re
import sys
import traceback
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import gin

from prompt_tuning import distributed
from prompt_tuning import preemption

_GIN_FILES = flags.DEFINE_multi_string('gin_file', [], 'Gin files to parse, in order.')
_GIN_BINDINGS = flags.DEFINE_multi_string(
    'gin_bindings', [], 'Gin bindings, applied after the files; `--gin.X=V` is short for '
    '`--gin_bindings="X = V"`.')
_GIN_SEARCH_PATHS = flags.DEFINE_list('gin_search_paths', [], 'Folders holding gin files.')
_TFDS_DATA_DIR = flags.DEFINE_string(
    'tfds_data_dir', None, "Where TFDS-backed tasks read their prepared data (t5x's flag); "
    'overrides TFDS_DATA_DIR.')

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gin')
MODELS_DIR = os.path.join(GIN_DIR, 'models')


def model_sizes() -> list[str]:
  """Sizes with a shipped gin file: `gin/models/t5_1_1_{size}.gin`."""
  return sorted(name[len('t5_1_1_'):-len('.gin')] for name in os.listdir(MODELS_DIR)
                if name.startswith('t5_1_1_') and name.endswith('.gin'))


def model_gin_file(size: str) -> str:
  """The gin file of a T5 1.1 size ('small', 'base', ...), or a clear error."""
  if size not in model_sizes():
    raise ValueError(f'unknown T5 1.1 size {size!r}; choose one of {", ".join(model_sizes())} '
                     f'(files t5_1_1_<size>.gin in {MODELS_DIR}).')
  return os.path.join(MODELS_DIR, f't5_1_1_{size}.gin')


def find_gin_file(name: str, search_paths: Sequence[str] = ()) -> str:
  """Resolves `name` as given, then under each search path, then under `gin/`."""
  for directory in ('', *search_paths, GIN_DIR):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  hint = ''
  if os.path.basename(name).startswith('t5_1_1_'):
    hint = f'; model sizes available: {", ".join(model_sizes())}'
  raise FileNotFoundError(f'gin file {name!r} not found in the working directory, '
                          f'{list(search_paths)} or {GIN_DIR}{hint}.')


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (),
          search_paths: Sequence[str] = ()) -> None:
  """Parses the files in order, then the `X=value` bindings, and finalizes the config
  (which checks that every `%gin.REQUIRED` macro was set)."""
  gin.clear_config()
  for directory in (*search_paths, GIN_DIR):
    gin.add_config_file_search_path(directory)
  files = [find_gin_file(name, search_paths) for name in gin_files]
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=True)
  except ValueError as e:
    missing = re.search(r'(\w+)/macro.value set to `%gin.REQUIRED`', str(e))
    if missing:
      raise ValueError(f'required gin macro {missing[1]} is not set; pass '
                       f'--gin.{missing[1]}=... (strings in quotes: "\'...\'").') from None
    raise


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Turns each `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE`."""
  def rewrite(arg):
    if not arg.startswith('--gin.'):
      return arg
    name, _, value = arg[len('--gin.'):].partition('=')
    return f'--gin_bindings={name} = {value}'
  return [rewrite(arg) for arg in args]


def run(main: Callable[[Sequence[str]], None]) -> None:
  """`app.run` that understands `--gin.X=V` flags and turns bad input (a ValueError, a
  missing file, a gin error) into one line on stderr and exit status 1; a preempted run
  exits with `preemption.EXIT_STATUS` and its one-line message. Tools call this with their
  `main`; gin runs call `run_configured`."""

  def main_with_clear_errors(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # Quiet library INFO logs (orbax, seqio).
    try:
      main(argv)
    except preemption.Preempted as e:
      sys.stderr.write(str(e).splitlines()[0] + '\n')  # Without gin's "In call to ..." line.
      sys.exit(preemption.EXIT_STATUS)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
      logging.debug('%s', traceback.format_exc())  # Shown with --verbosity=1.
      message = ' '.join(str(e).split())
      sys.exit(f'error: {message}')

  app.run(main_with_clear_errors, flags_parser=lambda argv: flags.FLAGS(rewrite_gin_args(argv)))


def run_configured(configured: Callable[[], Any]) -> None:
  """The command line of a gin run (train, evaluate, infer): join the other hosts, parse the
  gin files and bindings, then call `configured` with what they bound."""

  def main(argv):
    del argv
    distributed.initialize_from_flags()  # Before any other JAX call.
    parse_flags()
    configured()

  run(main)


def apply_tfds_data_dir() -> None:
  """Points TFDS-backed tasks at `--tfds_data_dir` (seqio's override), when given."""
  if _TFDS_DATA_DIR.value:
    import seqio  # pylint: disable=g-import-not-at-top  # Only here: it loads TensorFlow.
    seqio.set_tfds_data_dir_override(_TFDS_DATA_DIR.value)


def parse_flags() -> None:
  """Applies `--tfds_data_dir`, then parses the gin files and bindings given on the
  command line."""
  apply_tfds_data_dir()
  parse(_GIN_FILES.value, _GIN_BINDINGS.value, _GIN_SEARCH_PATHS.value)
