"""The batching engine of `prompt_tuning.serve`: rows for any prompts -> one bounded queue ->
one device thread -> batches of bucketed shapes -> `predict_batch` / `score_batch`.

A request becomes rows (`Row`): one per input to decode, or one per (input, label word) to
score. Rows of every prompt enter one queue of at most `ServeOptions.max_queue_rows` rows
(beyond it, `submit` raises `QueueFull`). The device thread takes the oldest row and every
row of the same kind (decode or score; with `batching='one_task'` also the same prompt) up
to the largest batch bucket, waiting at most `batch_window_ms` after that first row came for
the batch to fill. The batch is padded to the nearest batch bucket `[B]` and its inputs to
the nearest length bucket `[B, L]`; decoding runs TASK_FEATURE_LENGTHS['targets'] steps. The
prompts sit in a `PromptTable` of fixed capacity `[N_max, P_max, E]`, so a prompt added while
serving fills a free row, and every (batch bucket, length bucket, kind) program is compiled
once by `warm_up`: afterwards nothing compiles (`compilations()` counts XLA compilations).
"""

import collections
import concurrent.futures
import dataclasses
import functools
import threading
import time
from typing import Any, Optional, Sequence

import gin
import jax
import numpy as np
import prometheus_client
from prometheus_client.core import CounterMetricFamily

from prompt_tuning.model import models
from prompt_tuning.model import prompts
from prompt_tuning.training import partitioning
from prompt_tuning.training import preflight

Params = Any
BATCHING = ('mixed', 'one_task')
COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'  # jax._src.dispatch's event.
_compiles = {'count': 0}
_compiles_lock = threading.Lock()


def _count_compilation(event: str, duration_secs: float, **kwargs) -> None:
  del duration_secs, kwargs
  if event == COMPILE_EVENT:
    with _compiles_lock:
      _compiles['count'] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compilation)


def compilations() -> int:
  """XLA programs built in this process since this module was imported (compiled, or read
  from a persistent compilation cache: jax reports both as one event)."""
  with _compiles_lock:
    return _compiles['count']


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ServeOptions:
  """How the server batches, queues and holds prompts (gin/runs/prompt_serve.gin)."""
  batch_window_ms: float = 5.0  # SERVE_BATCH_WINDOW_MS: a batch waits this long to fill.
  max_queue_rows: int = 256  # SERVE_QUEUE_ROWS: queued rows beyond this are refused (503).
  batching: str = 'mixed'  # SERVE_BATCHING: 'mixed' tasks per batch, or 'one_task'.
  batch_buckets: Optional[Sequence[int]] = None  # None: 8, 16, ... up to EVAL_BATCH_SIZE.
  length_buckets: Optional[Sequence[int]] = None  # None: 16, 32, ... up to the inputs length.
  max_prompts: Optional[int] = None  # Table rows; None: the next multiple of 8 above the count.
  max_prompt_length: Optional[int] = None  # Table columns; None: the longest loaded prompt.
  truncate: bool = False  # SERVE_TRUNCATE: cut over-long inputs (else refuse them, 400).


def _powers_of_two(smallest: int, largest: int) -> list[int]:
  """smallest, 2 * smallest, ... below `largest`, then `largest`."""
  sizes, size = [], smallest
  while size < largest:
    sizes.append(size)
    size *= 2
  return sizes + [largest]


def batch_buckets(options: ServeOptions, batch_size: int, ways: int) -> list[int]:
  """Batch sizes [B] the engine compiles, each a multiple of the data-parallel size `ways`;
  the largest is the most rows per batch."""
  largest = -(-batch_size // ways) * ways
  buckets = sorted(set(options.batch_buckets or
                       [-(-size // ways) * ways for size in _powers_of_two(8, largest)]))
  if buckets[0] <= 0 or any(size % ways for size in buckets):
    raise ValueError(f'SERVE_BATCH_BUCKETS={list(options.batch_buckets)} must be positive '
                     f'multiples of the {ways}-way data parallelism of the mesh.')
  return buckets


def length_buckets(options: ServeOptions, inputs_length: int) -> list[int]:
  """Input lengths [L] the engine compiles; TASK_FEATURE_LENGTHS['inputs'] is always one."""
  if options.length_buckets is None:
    return _powers_of_two(min(16, inputs_length), inputs_length)
  if any(not 0 < length <= inputs_length for length in options.length_buckets):
    raise ValueError(f'SERVE_LENGTH_BUCKETS={list(options.length_buckets)} must lie in 1..'
                     f"{inputs_length} (TASK_FEATURE_LENGTHS['inputs']).")
  return sorted({*options.length_buckets, inputs_length})


def fixed_table(table: prompts.PromptTable, rows: int, length: int) -> prompts.PromptTable:
  """`table` [N, P, E] (left-padded) copied into a table of capacity [rows, length, E]."""
  count, longest, width = table.prompts.shape
  if count > rows or longest > length:
    raise ValueError(f'{count} prompts of up to {longest} rows do not fit a table of {rows} '
                     f'prompts of {length}; raise SERVE_MAX_PROMPTS / SERVE_MAX_PROMPT_LENGTH.')
  held = np.zeros((rows, length, width), np.float32)
  held[:count, length - longest:] = table.prompts
  return prompts.PromptTable(held, np.pad(np.asarray(table.lengths, np.int32),
                                          (0, rows - count)))


class QueueFull(Exception):
  """The queue cannot take a request's rows now; retry later (HTTP 503)."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One batch row: input ids [n] (EOS included, n <= the inputs length) with the row of its
  prompt in the table. `targets` [t] (t <= T): score these target ids (rank classification);
  None: decode, keeping the first `decode_length` tokens (None: all T)."""
  tokens: np.ndarray
  prompt_id: int
  targets: Optional[Sequence[int]] = None
  decode_length: Optional[int] = None


class _Pending:
  """A request's rows in flight: its future gets every row's result, in order."""

  def __init__(self, count: int):
    self.future = concurrent.futures.Future()
    self.future.set_running_or_notify_cancel()  # A client that goes away cancels nothing.
    self.results, self.left = [None] * count, count

  def done(self, index: int, result: Any) -> None:
    self.results[index], self.left = result, self.left - 1
    if not self.left:
      self.future.set_result(self.results)

  def fail(self, error: BaseException) -> None:
    if not self.future.done():
      self.future.set_exception(error)


@dataclasses.dataclass(frozen=True)
class _Item:
  row: Row
  pending: _Pending
  index: int
  key: tuple  # Rows of one key batch together: (decode or score, prompt or None).
  arrival: float


class Metrics:
  """The engine's and the server's Prometheus metrics, in a registry of their own."""

  def __init__(self):
    self.registry = registry = prometheus_client.CollectorRegistry()
    self.requests = prometheus_client.Counter(
        'serve_requests', 'Predict requests by prompt and HTTP status.', ['task', 'status'],
        registry=registry)
    self.latency = prometheus_client.Histogram(
        'serve_request_latency_seconds', 'Time from receiving a predict request to its answer.',
        ['mode'], registry=registry)
    self.batch_fill = prometheus_client.Histogram(
        'serve_batch_fill', 'Rows used / batch bucket size of each device batch.',
        buckets=(0.125, 0.25, 0.5, 0.75, 0.99, 1.0), registry=registry)
    self.batch_prompts = prometheus_client.Histogram(
        'serve_batch_prompts', 'Distinct prompts in each device batch.',
        buckets=(1, 2, 3, 4, 8, 16, 32, 64), registry=registry)
    self.queue_rows = prometheus_client.Gauge(
        'serve_queue_rows', 'Rows waiting for the device.', registry=registry)
    registry.register(_CompilationCollector())

  def text(self) -> bytes:
    return prometheus_client.generate_latest(self.registry)


class _CompilationCollector:
  def collect(self):
    yield CounterMetricFamily('serve_xla_compilations', 'XLA programs built in the server '
                              'process, compiled or read from a compilation cache (none after '
                              'warm-up).', value=compilations())


class Engine:
  """Runs the rows of every request on the frozen `model` (built without a prompt) in
  batches on `mesh`, one device thread; `table` [N_max, P_max, E] the prompts' capacity."""

  def __init__(self, model: models.EncoderDecoderModel, frozen: Params,
               mesh: jax.sharding.Mesh, table: prompts.PromptTable,
               feature_lengths: dict[str, int], batch_size: int, options: ServeOptions,
               metrics: Metrics):
    if options.batching not in BATCHING:
      raise ValueError(f'SERVE_BATCHING={options.batching!r}; choose one of {list(BATCHING)}.')
    if options.max_queue_rows <= 0 or options.batch_window_ms < 0:
      raise ValueError('SERVE_QUEUE_ROWS must be positive and SERVE_BATCH_WINDOW_MS not '
                       'negative.')
    self.model, self.frozen, self.options, self.metrics = model, frozen, options, metrics
    self.targets_length = feature_lengths['targets']
    self.batch_buckets = batch_buckets(options, batch_size, preflight.data_parallel_size(mesh))
    self.length_buckets = length_buckets(options, feature_lengths['inputs'])
    self.max_rows = self.batch_buckets[-1]
    self._batch_sharding = partitioning.batch_sharding(mesh)
    self._replicated = replicated = partitioning.replicated(mesh)
    self._host_table = table
    self._table = jax.device_put(table, replicated)
    self._table_lock = threading.Lock()
    self._predict = jax.jit(lambda table, frozen, batch: model.predict_batch(
        frozen, batch, max_decode_length=self.targets_length, prompt_table=table),
                            out_shardings=replicated)
    self._score = jax.jit(lambda table, frozen, batch: model.score_batch(
        frozen, batch, prompt_table=table), out_shardings=replicated)
    self._queue: collections.deque[_Item] = collections.deque()
    self._keys: collections.Counter = collections.Counter()
    self._ready = threading.Condition()
    self._draining = self._stopping = False
    self._thread = threading.Thread(target=self._loop, name='device', daemon=True)

  @property
  def capacity(self) -> tuple[int, int]:
    """(table rows N_max, prompt length P_max)."""
    return self._host_table.prompts.shape[:2]

  def set_prompt(self, row: int, prompt: np.ndarray) -> None:
    """Puts `prompt` [P, E] (P <= P_max) into table row `row`; compiles nothing."""
    with self._table_lock:
      held, lengths = self._host_table.prompts.copy(), self._host_table.lengths.copy()
      held[row] = 0
      held[row, held.shape[1] - len(prompt):] = prompt
      lengths[row] = len(prompt)
      self._host_table = prompts.PromptTable(held, lengths)
      self._table = jax.device_put(self._host_table, self._replicated)

  def warm_up(self) -> tuple[int, int, float]:
    """Runs every (batch bucket, length bucket, decode/score) program once: (programs,
    XLA compilations, seconds)."""
    start, before, programs = time.perf_counter(), compilations(), 0
    for size in self.batch_buckets:
      for length in self.length_buckets:
        for targets in (None, np.ones(self.targets_length, np.int32)):
          self._outputs([Row(np.ones(length, np.int32), 0, targets)] * size)
          programs += 1
    return programs, compilations() - before, time.perf_counter() - start

  def start(self) -> None:
    self._thread.start()

  def submit(self, rows: Sequence[Row], prompt_name: str) -> concurrent.futures.Future:
    """Queues `rows` (all of prompt `prompt_name`); the future gets each row's result in
    order: (decoded ids [T] int32, score) to decode, the log-likelihood to score. Raises
    `QueueFull` when the queue has no room for all of them."""
    pending, now = _Pending(len(rows)), time.monotonic()
    with self._ready:
      if len(self._queue) + len(rows) > self.options.max_queue_rows or self._stopping:
        raise QueueFull(f'the queue holds {len(self._queue)} of {self.options.max_queue_rows} '
                        f'rows and this request needs {len(rows)}; retry shortly.')
      for index, row in enumerate(rows):
        key = (row.targets is None,
               prompt_name if self.options.batching == 'one_task' else None)
        self._queue.append(_Item(row, pending, index, key, now))
        self._keys[key] += 1
      self.metrics.queue_rows.set(len(self._queue))
      self._ready.notify()
    return pending.future

  def drain(self) -> None:
    """Stop waiting for batches to fill: run what is queued at once (shutting down)."""
    with self._ready:
      self._draining = True
      self._ready.notify()

  def stop(self) -> None:
    """Answers every queued row, then ends the device thread."""
    with self._ready:
      self._draining = self._stopping = True
      self._ready.notify()
    if self._thread.is_alive():
      self._thread.join()

  def _loop(self) -> None:
    while (items := self._take()) is not None:
      try:
        results = self._outputs([item.row for item in items])
      except Exception as e:  # pylint: disable=broad-except  # Fails these requests only.
        for item in items:
          item.pending.fail(RuntimeError(f'the device batch failed: {e}'))
        continue
      size = next(size for size in self.batch_buckets if size >= len(items))
      self.metrics.batch_fill.observe(len(items) / size)
      self.metrics.batch_prompts.observe(len({item.row.prompt_id for item in items}))
      for item, result in zip(items, results):
        item.pending.done(item.index, result)

  def _take(self) -> Optional[list[_Item]]:
    """The next batch: the oldest row and up to `max_rows` - 1 more of its key, once that
    many are queued or the window after the oldest row's arrival is over; None to stop."""
    with self._ready:
      while not self._queue:
        if self._stopping:
          return None
        self._ready.wait()
      first = self._queue[0]
      deadline = first.arrival + self.options.batch_window_ms / 1000
      while (not self._draining and self._keys[first.key] < self.max_rows and
             (left := deadline - time.monotonic()) > 0):
        self._ready.wait(left)
      taken, kept = [], collections.deque()
      for item in self._queue:
        (taken if item.key == first.key and len(taken) < self.max_rows else kept).append(item)
      self._queue = kept
      self._keys[first.key] -= len(taken)
      self.metrics.queue_rows.set(len(kept))
      return taken

  def _outputs(self, rows: Sequence[Row]) -> list:
    """Each row's result (see `submit`); all rows decode, or all score."""
    size = next(size for size in self.batch_buckets if size >= len(rows))
    length = next(length for length in self.length_buckets
                  if length >= max(len(row.tokens) for row in rows))
    prompt_ids = np.zeros(size, np.int32)
    prompt_ids[:len(rows)] = [row.prompt_id for row in rows]
    batch = functools.partial(self._on_mesh, [row.tokens for row in rows], prompt_ids,
                              {'inputs': length, 'targets': self.targets_length})
    with self._table_lock:
      table = self._table
    if rows[0].targets is not None:
      return self._scores(table, batch([row.targets for row in rows]))[:len(rows)].tolist()
    tokens, scores = jax.device_get(self._predict(table, self.frozen, batch([])))
    tokens, scores = np.array(tokens), np.array(scores)
    cut = [i for i, row in enumerate(rows)
           if row.decode_length is not None and tokens[i, row.decode_length:].any()]
    if cut:  # The decode's score covers all T tokens: score what is kept instead.
      for i in cut:
        tokens[i, rows[i].decode_length:] = 0
      kept = [np.trim_zeros(row, 'b') for row in tokens]  # Zeros after EOS already.
      scores[cut] = self._scores(table, batch(kept))[cut]
    return [(tokens[i], float(scores[i])) for i in range(len(rows))]

  def _scores(self, table: prompts.PromptTable, batch: dict) -> np.ndarray:
    """`score_batch` of a batch's targets -> [B]."""
    return np.asarray(jax.device_get(self._score(table, self.frozen, batch)))

  def _on_mesh(self, inputs: Sequence[Sequence[int]], prompt_ids: np.ndarray,
               lengths: dict[str, int], targets: Sequence[Sequence[int]]) -> dict:
    """The model's batch (`make_rows`) of `inputs` and `targets` (the rows up to
    `prompt_ids`' B left empty), with `prompt_ids` [B], split over the mesh's data axes."""
    empty = [[]] * (len(prompt_ids) - len(inputs))
    targets = list(targets) + [[]] * (len(prompt_ids) - len(targets))
    rows = self.model.make_rows(list(inputs) + empty, targets, lengths)
    return jax.device_put({**rows, 'prompt_ids': prompt_ids}, self._batch_sharding)

