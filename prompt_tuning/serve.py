r"""Serves many prompts of one frozen model over HTTP: each request names its prompt, and
requests of all prompts share batches on the accelerator (`serving.Engine`).

    python -m prompt_tuning.serve --gin_file=demo.gin --gin_file=runs/prompt_serve.gin \
      --prompt sentiment=/tmp/sentiment --prompt negation=/tmp/negation --port=8000

The gin files give the frozen model (INITIAL_CHECKPOINT_PATH, FROZEN_DTYPE, the mesh),
TASK_FEATURE_LENGTHS (inputs are cut or refused at 'inputs'; decoding runs 'targets' steps)
and EVAL_BATCH_SIZE (the most rows per batch); each prompt runs on the task PROMPT_TASKS names
for it, else its record's, else MIXTURE_OR_TASK_NAME, as in `evaluate`. Once every batch
shape is compiled the server prints `serving http://HOST:PORT (...)`. SIGTERM (or Ctrl-C)
stops accepting connections, answers every request already received, and exits 0.

API (JSON; every error is {"error": one line}):
- POST /v1/predict {"task": NAME, "inputs": [text, ...], "mode": "generate" | "rank",
  "max_decode_length": n (generate), "truncate": bool} -> {"task", "mode", "predictions":
  [text or label word], "scores": [decode log-likelihood] or [[one per label]], "labels"};
- GET /v1/prompts: the prompts with their records; POST /v1/prompts {"name", "path",
  "task"?} loads one more (PATH as in --prompt, PATH@STEP included) into a free row of the
  table: nothing recompiles;
- GET /healthz; GET /metrics (Prometheus text).
"""

import asyncio
import dataclasses
import json
import signal
import socket
import threading
import time
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

from absl import flags
import gin
import jax
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
import uvicorn

from prompt_tuning import evaluate
from prompt_tuning import gin_config
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import labels
from prompt_tuning.inference import prompt_bank
from prompt_tuning.inference import serving
from prompt_tuning.training import data
from prompt_tuning.training import runs

if __name__ != '__main__':  # `python -m` runs this file twice: as __main__, then as the module.
  _HOST = flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on (0.0.0.0: all).')
  _PORT = flags.DEFINE_integer('port', 8000, 'Port to listen on; 0 picks a free one.')
MODES = ('generate', 'rank')
FIELDS = ('task', 'inputs', 'mode', 'max_decode_length', 'truncate')
MAX_BODY_BYTES = 1 << 20


class Refused(Exception):
  """A request the server will not run: its HTTP status and a one-line reason."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class Served:
  """A prompt being served: its row of the table, its task's features, its label words and
  their target ids (L lists; None: the prompt cannot rank), its record and where it is."""
  row: int
  task: str
  inputs: Any  # The task's seqio.Feature for 'inputs'.
  targets: Any  # ... and for 'targets'.
  label_words: Optional[tuple[str, ...]]
  label_targets: Optional[list[list[int]]]
  record: dict
  path: str

  def describe(self, name: str) -> dict:
    return {'name': name, 'task': self.task, 'path': self.path,
            'label_words': list(self.label_words or []) or None, 'record': self.record}


class Catalog:
  """The served prompts: `bank`'s, prompt NAME on task `tasks[NAME]`, in `engine`'s table;
  `add` loads more while serving (one at a time, checked by the bank)."""

  def __init__(self, bank: prompt_bank.PromptBank, tasks: Mapping[str, str],
               engine: serving.Engine, targets_length: int, default_task: str,
               allow_unverified: bool):
    self.bank, self.engine, self.default_task = bank, engine, default_task
    self.targets_length, self.allow_unverified = targets_length, allow_unverified
    self._adding = threading.Lock()
    self._served = {name: self._describe(row, tasks[name], bank.record(name),
                                         bank.spec(name).path)
                    for row, name in enumerate(bank.names)}

  def _describe(self, row: int, task_name: str, record: dict, path: str) -> Served:
    task = data.get_task(task_name)
    words = record.get('label_words') or labels.labels_of(task_name)
    targets = evaluation.label_targets(task, words, self.targets_length) if words else None
    return Served(row, task_name, task.output_features['inputs'],
                  task.output_features['targets'], tuple(words) if words else None, targets,
                  record, path)

  def get(self, name: str) -> Optional[Served]:
    return self._served.get(name)

  @property
  def names(self) -> list[str]:
    return list(self._served)

  def listing(self) -> list[dict]:
    return [served.describe(name) for name, served in list(self._served.items())]

  def add(self, name: str, path: str, task: Optional[str]) -> dict:
    """Loads prompt `name` from `path` on `task` (else its record's, else the default) into
    the next free row; refuses in one line (ValueError, OSError; `Refused` 409 when full)."""
    spec = prompt_bank.parse_spec(f'{name}={path}')
    with self._adding:
      rows, length = self.engine.capacity
      if name in self._served:
        raise ValueError(f'prompt {name} is already served ({self._served[name].path}); '
                         'choose another name.')
      if len(self._served) >= rows:
        raise Refused(409, f'the prompt table is full ({rows} prompts); restart with a larger '
                           '--gin.SERVE_MAX_PROMPTS.')
      prompt, record = prompt_bank.load(spec, self.allow_unverified, self.bank.task_type)
      if len(prompt) > length:
        raise ValueError(f'prompt {name} has {len(prompt)} rows but the table holds prompts of '
                         f'up to {length}; restart with a larger --gin.SERVE_MAX_PROMPT_LENGTH.')
      row = len(self._served)
      served = self._describe(row, task or record['task'] or self.default_task, record,
                              spec.path)
      self.bank.add(spec, self.allow_unverified)  # Other frozen weights, another width.
      self.engine.set_prompt(row, prompt)
      self._served[name] = served
      return served.describe(name)


@dataclasses.dataclass(frozen=True)
class Query:
  """A parsed predict request: prompt `name`, its rows, and how to read their results."""
  name: str
  served: Served
  mode: str
  count: int  # Inputs.
  rows: list[serving.Row]


def parse_predict(body: Any, catalog: Catalog, inputs_length: int, targets_length: int,
                  truncate: bool) -> Query:
  """The rows of a predict request body, or `Refused` with the status and reason."""
  if not isinstance(body, dict):
    raise Refused(400, 'the body must be a JSON object, e.g. {"task": "sst2", "inputs": '
                       '["a fine film"]}.')
  unknown = sorted(set(body) - set(FIELDS))
  if unknown:
    raise Refused(400, f'unknown field(s) {unknown}; the fields are {list(FIELDS)}.')
  name, inputs, mode = body.get('task'), body.get('inputs'), body.get('mode', 'generate')
  served = catalog.get(name) if isinstance(name, str) else None
  if served is None:
    raise Refused(404 if isinstance(name, str) else 400,
                  f'unknown task {name!r}: "task" names a served prompt, one of {catalog.names} '
                  '(GET /v1/prompts; add one with POST /v1/prompts).')
  if mode not in MODES:
    raise Refused(400, f'unknown mode {mode!r}; choose one of {list(MODES)}.')
  if not (isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs)):
    raise Refused(400, '"inputs" must be a non-empty list of strings.')
  truncate = body.get('truncate', truncate)
  if not isinstance(truncate, bool):
    raise Refused(400, f'"truncate" must be true or false, got {truncate!r}.')
  decode_length = body.get('max_decode_length')
  if decode_length is not None and (mode != 'generate' or isinstance(decode_length, bool) or
                                    not isinstance(decode_length, int) or
                                    not 0 < decode_length <= targets_length):
    raise Refused(400, f'"max_decode_length" must be a whole number in 1..{targets_length} '
                       f"(TASK_FEATURE_LENGTHS['targets']) with mode generate, got "
                       f'{decode_length!r}.')
  if mode == 'rank' and served.label_words is None:
    raise Refused(400, f'prompt {name} has no label words to rank (its record and task '
                       f'{served.task} name none); use mode generate.')
  tokens = [_tokens(served.inputs, text, number, inputs_length, truncate)
            for number, text in enumerate(inputs)]
  if mode == 'generate':
    rows = [serving.Row(ids, served.row, None, decode_length) for ids in tokens]
  else:
    rows = [serving.Row(ids, served.row, targets) for ids in tokens
            for targets in served.label_targets]
  return Query(name, served, mode, len(inputs), rows)


def _tokens(feature: Any, text: str, number: int, length: int, truncate: bool) -> np.ndarray:
  """`text`'s ids [n] in the task's vocabulary, EOS added, cut to `length` as seqio does
  (when `truncate`)."""
  ids = list(feature.vocabulary.encode(text))
  if not ids:
    raise Refused(400, f'input {number} is empty; send some text.')
  if len(ids) + feature.add_eos > length and not truncate:
    raise Refused(400, f'input {number} is {len(ids) + feature.add_eos} tokens (EOS included) '
                       f"but TASK_FEATURE_LENGTHS['inputs'] is {length}; shorten it, or send "
                       '"truncate": true to cut it.')
  ids = ids[:length - feature.add_eos] + [feature.vocabulary.eos_id] * feature.add_eos
  return np.array(ids, np.int32)


def answer(query: Query, results: list) -> dict:
  """The response body of `query` from its rows' results (`serving.Engine.submit`)."""
  if query.mode == 'generate':
    vocabulary = query.served.targets.vocabulary
    return {'task': query.name, 'mode': query.mode,
            'predictions': [vocabulary.decode(tokens.tolist()) for tokens, _ in results],
            'scores': [score for _, score in results]}
  words = query.served.label_words
  scores = np.array(results).reshape(query.count, len(words))
  return {'task': query.name, 'mode': query.mode, 'labels': list(words),
          'predictions': [words[i] for i in scores.argmax(axis=1)], 'scores': scores.tolist()}


class Api:
  """The HTTP endpoints over a `Catalog` and its `serving.Engine`."""

  def __init__(self, catalog: Catalog, metrics: serving.Metrics,
               feature_lengths: Mapping[str, int], truncate: bool):
    self.catalog, self.engine, self.metrics = catalog, catalog.engine, metrics
    self.lengths, self.truncate = dict(feature_lengths), truncate

  def app(self) -> Starlette:
    return Starlette(routes=[
        Route('/v1/predict', self.predict, methods=['POST']),
        Route('/v1/prompts', self.prompts, methods=['GET']),
        Route('/v1/prompts', self.add_prompt, methods=['POST']),
        Route('/healthz', self.healthz, methods=['GET']),
        Route('/metrics', self.prometheus, methods=['GET']),
    ], exception_handlers={HTTPException: _http_error})

  async def predict(self, request: Request) -> Response:
    start, name, headers = time.perf_counter(), '-', None
    try:
      body = await _body(request)
      task = body.get('task') if isinstance(body, dict) else None
      name = task if isinstance(task, str) and self.catalog.get(task) else '-'
      query = parse_predict(body, self.catalog, self.lengths['inputs'], self.lengths['targets'],
                            self.truncate)
      if len(query.rows) > self.engine.options.max_queue_rows:
        raise Refused(413, f'this request needs {len(query.rows)} rows but the queue holds '
                           f'{self.engine.options.max_queue_rows}; send fewer inputs.')
      results = await asyncio.wrap_future(self.engine.submit(query.rows, query.name))
      status, body = 200, answer(query, results)
      self.metrics.latency.labels(query.mode).observe(time.perf_counter() - start)
    except Refused as e:
      status, body = e.status, {'error': str(e)}
    except serving.QueueFull as e:
      status, body, headers = 503, {'error': f'the server is busy: {e}'}, {'Retry-After': '1'}
    except RuntimeError as e:
      status, body = 500, {'error': gin_config.one_line(e)}
    self.metrics.requests.labels(name, str(status)).inc()
    return JSONResponse(body, status, headers)

  async def prompts(self, _: Request) -> Response:
    rows, length = self.engine.capacity
    return JSONResponse({'prompts': self.catalog.listing(),
                         'frozen_fingerprint': self.catalog.bank.frozen_fingerprint,
                         'capacity': {'prompts': rows, 'prompt_length': length}})

  async def add_prompt(self, request: Request) -> Response:
    try:
      body = await _body(request)
      if not (isinstance(body, dict) and set(body) <= {'name', 'path', 'task'} and
              isinstance(body.get('name'), str) and isinstance(body.get('path'), str) and
              isinstance(body.get('task', ''), str)):
        raise Refused(400, 'the body must be {"name": NAME, "path": PATH} and optionally '
                           '"task"; PATH a run directory, .npy or PEFT adapter on the server.')
      described = await run_in_threadpool(self.catalog.add, body['name'], body['path'],
                                          body.get('task'))
    except Refused as e:
      return JSONResponse({'error': str(e)}, e.status)
    except (ValueError, OSError) as e:
      return JSONResponse({'error': gin_config.one_line(e)}, 400)
    return JSONResponse(described, 201)

  async def healthz(self, _: Request) -> Response:
    return JSONResponse({'status': 'ok', 'prompts': len(self.catalog.names)})

  async def prometheus(self, _: Request) -> Response:
    return Response(self.metrics.text(), media_type='text/plain; version=0.0.4; charset=utf-8')


async def _body(request: Request) -> Any:
  """The request's JSON body; refused unless it is JSON (400) of at most MAX_BODY_BYTES (413)."""
  too_large = Refused(413, f'the body is over {MAX_BODY_BYTES} bytes; send fewer inputs per '
                           'request.')
  if int(request.headers.get('content-length', '0') or 0) > MAX_BODY_BYTES:
    raise too_large
  body = bytearray()
  async for chunk in request.stream():
    body += chunk
    if len(body) > MAX_BODY_BYTES:
      raise too_large
  try:
    return json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise Refused(400, f'the body is not JSON ({gin_config.one_line(e)}).') from None


async def _http_error(request: Request, error: HTTPException) -> Response:
  return JSONResponse({'error': f'{error.detail}: {request.method} {request.url.path}; the API '
                                'is POST /v1/predict, GET|POST /v1/prompts, GET /healthz, '
                                'GET /metrics.'}, error.status_code, error.headers)


class _Server(uvicorn.Server):
  """uvicorn's, printing where it serves; SIGTERM / SIGINT also runs queued rows at once."""

  def __init__(self, config: uvicorn.Config, engine: serving.Engine, banner: str):
    super().__init__(config)
    self.engine, self.banner = engine, banner

  async def startup(self, sockets=None) -> None:
    await super().startup(sockets)
    if self.started:
      host, port = self.servers[0].sockets[0].getsockname()[:2]
      print(f'serving http://{host}:{port} ({self.banner})', flush=True)

  def handle_exit(self, sig, frame) -> None:
    self.engine.drain()
    super().handle_exit(sig, frame)


def _bound(host: str, port: int) -> socket.socket:
  """A socket bound to (host, port), not yet listening (uvicorn listens once it serves)."""
  sock = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise ValueError(f'cannot listen on {host}:{port} ({e.strerror}); choose another --port '
                     '(0: any free port) or --host.') from None
  return sock


@gin.configurable
def serve(setup: runs.RunSetup = gin.REQUIRED,
          eval_data: evaluation.EvalConfig = gin.REQUIRED, prompts: Sequence[str] = (),
          allow_unverified_prompts: bool = False,
          prompt_tasks: Mapping[str, str] = MappingProxyType({}),
          options: serving.ServeOptions = serving.ServeOptions()) -> None:
  """Serves `prompts` (PROMPTS, plus every `--prompt`) until SIGTERM; `allow_unverified_prompts`
  and `prompt_tasks` as in `evaluate`, `options` (SERVE_*) as in `serving.ServeOptions`."""
  specs = [*prompts, *prompt_bank.flag_prompts()]
  if not specs:
    raise ValueError('serve needs a prompt to start with: pass --prompt NAME=PATH (more can be '
                     'added later with POST /v1/prompts).')
  if jax.process_count() > 1:
    raise ValueError('serve runs in one process; start it on one host (its devices: the mesh).')
  sock = _bound(_HOST.value, _PORT.value)  # Before the slow part: a used port fails at once.
  evaluator = evaluate.prepare_prompts(setup, eval_data, specs, allow_unverified_prompts,
                                       prompt_tasks)
  bank, lengths = evaluator.bank, dict(eval_data.task_feature_lengths)
  table = bank.table()
  count, longest = table.prompts.shape[:2]
  capacity = (options.max_prompts or (count // 8 + 1) * 8,
              options.max_prompt_length or longest)
  metrics = serving.Metrics()
  engine = serving.Engine(setup.model.without_prompt(), evaluator.frozen,
                          evaluator.batch_sharding.mesh, serving.fixed_table(table, *capacity),
                          lengths, eval_data.batch_size, options, metrics)
  catalog = Catalog(bank, evaluator.tasks, engine, lengths['targets'],
                    eval_data.mixture_or_task_name, allow_unverified_prompts)
  programs, compiled, seconds = engine.warm_up()
  print(f'compiled {programs} programs ({compiled} XLA compilations: batch buckets '
        f'{engine.batch_buckets} x length buckets {engine.length_buckets} x generate, rank) in '
        f'{seconds:.1f} s', flush=True)
  engine.start()
  config = uvicorn.Config(Api(catalog, metrics, lengths, options.truncate).app(),
                          log_level='warning', access_log=False, lifespan='off',
                          timeout_graceful_shutdown=None)
  devices = evaluator.batch_sharding.mesh.devices
  banner = (f'{count} prompts, table {capacity[0]} x {capacity[1]}, {options.batching} '
            f'batching, up to {engine.max_rows} rows per batch, {devices.size} '
            f'{devices.flat[0].platform} device(s)')
  # uvicorn raises the signal that stopped it again once it is done: let that be a no-op.
  for stop in (signal.SIGTERM, signal.SIGINT):
    signal.signal(stop, lambda sig, frame: None)
  _Server(config, engine, banner).run(sockets=[sock])
  engine.stop()
  print('stopped: every accepted request was answered', flush=True)


if __name__ == '__main__':
  from prompt_tuning import serve as serve_lib  # The module gin configures, not __main__.
  gin_config.run_configured(serve_lib.serve)
