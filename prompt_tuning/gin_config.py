"""Gin files and flags, t5x style: `--gin_file`, `--gin.X=...`, `--gin_search_paths`,
`--tfds_data_dir`.

The repository's `gin/` folder is always searched last, so `models/t5_1_1_base.gin`
works from any directory. Gin runs start with `run_configured(fn)`; other tools with `run(main)`.
"""

import difflib
import logging as python_logging
import os
import re
import sys
import tokenize
import traceback
from typing import Any, Callable, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import gin

from prompt_tuning.training import distributed
from prompt_tuning.training import preemption

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


class _QuietGinProbes(python_logging.Filter):
  """Drops gin's error-level 'Path not found' lines: gin logs one for every include it
  probes as a Python package path before finding it in a search path."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return not record.pathname.endswith(os.path.join('gin', 'resource_reader.py'))


python_logging.getLogger().addFilter(_QuietGinProbes())


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (),
          search_paths: Sequence[str] = ()) -> None:
  """Parses the files in order, then the `X=value` bindings, and finalizes the config
  (which checks that every `%gin.REQUIRED` macro was set). A binding that sets a macro
  nothing uses (a misspelling) is an error naming the closest macros that are used."""
  gin.clear_config()
  for directory in (*search_paths, GIN_DIR):
    gin.add_config_file_search_path(directory)
  files = [find_gin_file(name, search_paths) for name in gin_files]
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=True)
  except (SyntaxError, tokenize.TokenError) as e:
    raise ValueError(_syntax_error_message(e)) from None
  except ValueError as e:
    missing = re.search(r'(\w+)/macro.value set to `%gin.REQUIRED`', str(e))
    if missing:
      raise ValueError(f'required gin macro {missing[1]} is not set; pass '
                       f'--gin.{missing[1]}=... (strings in quotes: "\'...\'").') from None
    raise
  check_macros_used(bindings)


def _syntax_error_message(error: SyntaxError | tokenize.TokenError) -> str:
  """Where gin could not parse a file or binding, and how values are written."""
  text = getattr(error, 'text', None)
  if text and getattr(error, 'filename', None):
    where = f'{error.filename}:{error.lineno}: {text.strip()!r}'
  elif text:
    where = f'the binding {text.strip()!r}'
  else:
    where = 'a binding (an unclosed bracket or quote?)'
  return (f'gin cannot read {where}; values are Python literals: 0.3, 1e-3, True, None, '
          '[1, 2], strings in quotes ("\'text\'").')


def _macro_references(value: Any) -> Iterator[str]:
  """The names of the macros `value` refers to (`%NAME`), looking inside lists and dicts."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == 'gin.macro':
      yield value.scoped_selector.rsplit('/', 1)[0]
  elif isinstance(value, (list, tuple)):
    for item in value:
      yield from _macro_references(item)
  elif isinstance(value, dict):
    for key, item in value.items():
      yield from _macro_references(key)
      yield from _macro_references(item)


def used_macros() -> set[str]:
  """Every macro some binding of the parsed config refers to."""
  return {name for parameters in gin.config._CONFIG.values()  # pylint: disable=protected-access
          for value in parameters.values() for name in _macro_references(value)}


def check_macros_used(bindings: Sequence[str]) -> None:
  """Refuses a `NAME = value` binding whose macro no configurable reads."""
  used = used_macros()
  for binding in bindings:
    name = binding.partition('=')[0].strip()
    if not name or '.' in name or name in used:
      continue  # `configurable.parameter` bindings are checked by gin itself.
    close = difflib.get_close_matches(name, sorted(used), n=3, cutoff=0.6)
    hint = f'did you mean {" or ".join(close)}?' if close else (
        f'the macros this run reads are {", ".join(sorted(used))}.')
    raise ValueError(f'--gin.{name} sets a macro that nothing in this run reads; {hint}')


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Turns each `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE`."""
  def rewrite(arg):
    if not arg.startswith('--gin.'):
      return arg
    name, _, value = arg[len('--gin.'):].partition('=')
    return f'--gin_bindings={name} = {value}'
  return [rewrite(arg) for arg in args]


def one_line(error: BaseException) -> str:
  """An error's message on one line, without the `In call to configurable ...` context
  gin appends to errors raised inside configurables."""
  message = re.split(r'\s+In call to configurable ', str(error))[0]
  return ' '.join(message.split())


def with_clear_errors(main: Callable[[Sequence[str]], None]) -> Callable[[Sequence[str]], None]:
  """`main`, turning bad input (a ValueError, a missing or unwritable file, a gin error)
  into one line on stderr and exit status 1, and a preempted run into its one-line message
  and exit status `preemption.EXIT_STATUS`."""

  def main_with_clear_errors(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # Quiet library INFO logs (orbax, seqio).
    try:
      main(argv)
    except preemption.Preempted as e:
      sys.stderr.write(one_line(e) + '\n')
      sys.exit(preemption.EXIT_STATUS)
    except (ValueError, OSError, RuntimeError) as e:
      logging.debug('%s', traceback.format_exc())  # Shown with --verbosity=1.
      sys.exit(f'error: {one_line(e)}')

  return main_with_clear_errors


def run(main: Callable[[Sequence[str]], None]) -> None:
  """`app.run` of `with_clear_errors(main)` that understands `--gin.X=V` flags. Tools call
  this with their `main`; gin runs call `run_configured`."""
  app.run(with_clear_errors(main),
          flags_parser=lambda argv: flags.FLAGS(rewrite_gin_args(argv)))


def configured_main(configured: Callable[[], Any]) -> Callable[[Sequence[str]], None]:
  """The `main` of a gin run (train, evaluate, infer): join the other hosts, parse the gin
  files and bindings, then call `configured` with what they bound."""

  def main(argv):
    del argv
    distributed.initialize_from_flags()  # Before any other JAX call.
    parse_flags()
    with distributed.reporting_lost_processes():  # A lost host: one line, not a native abort.
      configured()

  return main


def run_configured(configured: Callable[[], Any]) -> None:
  """The command line of a gin run: `run(configured_main(configured))`."""
  run(configured_main(configured))


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
