r"""Load on `python -m prompt_tuning.serve`: several prompts' requests batched together on the
device (`SERVE_BATCHING='mixed'`) against one prompt per batch (`'one_task'`).

The script starts one server per batching on 127.0.0.1 (free ports; the flags after `--`
are the servers'), then loads them in alternating rounds (mixed, one_task, mixed, ...; the
idle server waits on a condition and takes no CPU): each round sends `--requests`
single-input predict requests from `--clients` threads (each sends its next request when its
last one is answered), spread round-robin over every served prompt, for at most
`--max_seconds`. It prints one JSON line per round, then a summary: the median over rounds
of the mixed / one_task throughput ratio with its min–max, and per batching the median
requests per second, p50 / p99 latency, the errors by HTTP status, and from the server's
/metrics the batches run, their mean fill (rows / bucket) and mean distinct prompts per
batch. Both servers share a compilation cache, so the second starts fast with the same
programs. From the repository root:

    python benchmarks/serve_load.py --rounds=5 --requests=1000 --clients=16 -- \
      --gin_file=demo.gin --gin_file=runs/prompt_serve.gin --gin.EVAL_BATCH_SIZE=16 \
      --prompt s0=/tmp/s0 --prompt s1=/tmp/s1 --prompt n0=/tmp/n0 --prompt n1=/tmp/n1
"""

import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from absl import app
from absl import flags
import numpy as np

_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Paired rounds: each loads both servers once.')
_REQUESTS = flags.DEFINE_integer('requests', 1000, 'Timed requests per server and round.')
_CLIENTS = flags.DEFINE_integer('clients', 16, 'Concurrent client threads.')
_MAX_SECONDS = flags.DEFINE_float('max_seconds', 120, "End a server's round after this long.")
_MODE = flags.DEFINE_enum('mode', 'generate', ['generate', 'rank'], 'Predict mode.')
_TEXTS = flags.DEFINE_string('texts', None, 'A file of inputs, one per line; default: reviews.')
_STARTUP_SECONDS = flags.DEFINE_float('startup_seconds', 1200, 'Longest wait for a server.')
BATCHINGS = ('mixed', 'one_task')
REVIEWS = ['the plot was dull .', 'the actors were not bad at all .',
           'a lovely film with a great cast .', 'the music was awful and the ending was worse .',
           'i did not enjoy the story .', 'the seats were fine and the film was better .',
           'overall a boring evening .', 'the dialogue was not dull .']


def _call(url: str, body=None, timeout: float = 120) -> tuple[int, dict]:
  request = urllib.request.Request(url, None if body is None else json.dumps(body).encode(),
                                   headers={'Content-Type': 'application/json'})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _start(server_args: list[str], batching: str, cache: str, log) -> tuple[subprocess.Popen, str]:
  """A server with `batching` and its URL once it serves."""
  process = subprocess.Popen(
      [sys.executable, '-m', 'prompt_tuning.serve', *server_args,
       f"--gin.SERVE_BATCHING='{batching}'", '--host=127.0.0.1', '--port=0'],
      stdout=subprocess.PIPE, stderr=log, text=True,
      env={**os.environ, 'JAX_COMPILATION_CACHE_DIR': cache,
           'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'})
  found = {}

  def read():
    for line in process.stdout:
      match = re.match(r'serving (http://127\.0\.0\.1:\d+) ', line)
      if match:
        found['url'] = match[1]
      print(f'[{batching}] {line}', end='', file=sys.stderr, flush=True)

  threading.Thread(target=read, daemon=True).start()
  deadline = time.monotonic() + _STARTUP_SECONDS.value
  while 'url' not in found:
    if process.poll() is not None or time.monotonic() > deadline:
      process.kill()
      raise RuntimeError(f'the {batching} server did not start (exit {process.poll()}); see '
                         f'{log.name}.')
    time.sleep(0.2)
  return process, found['url']


def _metrics(url: str) -> str:
  with urllib.request.urlopen(f'{url}/metrics', timeout=60) as response:
    return response.read().decode()


def _metric(text: str, name: str) -> float:
  match = re.search(rf'^{re.escape(name)} (\S+)$', text, re.M)
  return float(match[1]) if match else 0.0


def _load(url: str, texts: list[str]) -> dict:
  """Sends the timed requests; returns the figures of one batching."""
  _, listing = _call(f'{url}/v1/prompts')
  names = [p['name'] for p in listing['prompts'] if _MODE.value == 'generate' or
           p['label_words']]
  for name in names:  # Untimed: one request per prompt first.
    _call(f'{url}/v1/predict', {'task': name, 'inputs': texts[:1], 'mode': _MODE.value})
  before = _metrics(url)  # The batches of the untimed requests are not counted.
  numbers, lock, latencies, errors = itertools.count(), threading.Lock(), [], {}
  start = time.perf_counter()
  stop = start + _MAX_SECONDS.value

  def client():
    while True:
      with lock:
        number = next(numbers)
      if number >= _REQUESTS.value or time.perf_counter() > stop:
        return
      body = {'task': names[number % len(names)],
              'inputs': [texts[number // len(names) % len(texts)]], 'mode': _MODE.value}
      sent = time.perf_counter()
      status, _ = _call(f'{url}/v1/predict', body)
      with lock:
        if status == 200:
          latencies.append(time.perf_counter() - sent)
        else:
          errors[str(status)] = errors.get(str(status), 0) + 1

  threads = [threading.Thread(target=client) for _ in range(_CLIENTS.value)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  seconds = time.perf_counter() - start
  after = _metrics(url)
  timed = lambda name: _metric(after, name) - _metric(before, name)
  batches = timed('serve_batch_fill_count')
  milliseconds = np.array(latencies) * 1000
  return {'answered': len(latencies), 'errors': errors, 'seconds': round(seconds, 2),
          'requests_per_s': round(len(latencies) / seconds, 2),
          'p50_ms': round(float(np.percentile(milliseconds, 50)), 1),
          'p99_ms': round(float(np.percentile(milliseconds, 99)), 1),
          'batches': int(batches), 'prompts': len(names),
          'mean_batch_fill': round(timed('serve_batch_fill_sum') / batches, 3),
          'mean_prompts_per_batch': round(timed('serve_batch_prompts_sum') / batches, 2)}


def main(argv):
  server_args = argv[1:]
  texts = REVIEWS
  if _TEXTS.value:
    with open(_TEXTS.value) as f:
      texts = [line.strip() for line in f if line.strip()]
  report = {'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}',
            'clients': _CLIENTS.value, 'mode': _MODE.value, 'rounds': _ROUNDS.value,
            'requests_per_round': _REQUESTS.value, 'server_args': server_args}
  rounds = {batching: [] for batching in BATCHINGS}
  with tempfile.TemporaryDirectory() as cache, tempfile.NamedTemporaryFile(
      'w', prefix='serve_load_', suffix='.log', delete=False) as log:
    servers = {}
    try:
      for batching in BATCHINGS:
        servers[batching] = _start(server_args, batching, cache, log)
      for number in range(_ROUNDS.value):
        for batching in BATCHINGS:
          rounds[batching].append(_load(servers[batching][1], texts))
        print(json.dumps({'round': number, **{b: rounds[b][-1] for b in BATCHINGS}}),
              flush=True)
    finally:
      for process, _ in servers.values():
        process.terminate()
        process.wait(120)
  ratios = [mixed['requests_per_s'] / one['requests_per_s']
            for mixed, one in zip(rounds['mixed'], rounds['one_task'])]
  report['mixed_over_one_task'] = {'median': round(float(np.median(ratios)), 2),
                                   'min': round(min(ratios), 2), 'max': round(max(ratios), 2)}
  for batching, figures in rounds.items():
    report[batching] = {key: (round(float(np.median([f[key] for f in figures])), 2)
                              if key != 'errors' else _summed([f[key] for f in figures]))
                        for key in figures[0]}
  print(json.dumps(report), flush=True)


def _summed(counts: list[dict]) -> dict:
  total = {}
  for count in counts:
    for status, number in count.items():
      total[status] = total.get(status, 0) + number
  return total


if __name__ == '__main__':
  app.run(main)
