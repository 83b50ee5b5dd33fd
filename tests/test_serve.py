"""`python -m prompt_tuning.serve` as a user runs it: real server processes on free ports of
127.0.0.1, real HTTP from threads. Answers equal the offline `MultiPromptEvaluator` of the
same prompts, a prompt added while serving is served, every bad request gets its status and
one line, overload gives 503s, SIGTERM answers what was accepted, and nothing compiles after
warm-up."""

import concurrent.futures
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import gin
import jax
import numpy as np
import pytest

import cli
from prompt_tuning import gin_config
from prompt_tuning.formats import prompt_formats
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import multi_prompt
from prompt_tuning.inference import prompt_bank
from prompt_tuning.model import models
from prompt_tuning.training import data
from prompt_tuning.training import partitioning
from prompt_tuning.training import runs

TASKS = {'a': 'tiny_sentiment', 'b': 'tiny_opposite', 'c': 'tiny_serve_topic',
         'd': 'tiny_sentiment'}  # Prompt -> its task; d is added while serving.
LABELS = ['positive', 'negative']  # The label words of a's and b's records; c has none.
TEXTS = ['the film was good', 'bad plot and very boring music', 'lovely actors',
         'the music was poor', 'fine', 'the plot was awful and the film was very poor too']
TOO_LONG = ' '.join(['the film was very good and the plot was lovely'] * 3)
TASK_MODULE = '''"""A third task for the serving tests (tiny_task has two)."""
import seqio
import tiny_task

if 'tiny_serve_topic' not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      'tiny_serve_topic', source=seqio.FunctionDataSource(tiny_task.reviews,
                                                          splits=['train', 'validation']),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={name: seqio.Feature(tiny_task.vocabulary, add_eos=True)
                       for name in ('inputs', 'targets')})
'''
MAIN_SERVER = ['--gin.SERVE_BATCH_BUCKETS=[4, 16]', '--gin.SERVE_LENGTH_BUCKETS=[8]',
               '--gin.SERVE_BATCH_WINDOW_MS=50', '--gin.SERVE_MAX_PROMPTS=5']
# A queue of 8 rows and a batch that never fills: rows wait 3 s in the queue. Its programs
# are the main server's (16, 16) ones, read from the compilation cache the main one wrote.
SMALL_SERVER = ['--gin.SERVE_BATCH_BUCKETS=[16]', '--gin.SERVE_LENGTH_BUCKETS=[16]',
                '--gin.SERVE_BATCH_WINDOW_MS=3000', '--gin.SERVE_QUEUE_ROWS=8',
                '--gin.SERVE_MAX_PROMPTS=5']


def _gin_of(args):
  """cli.TINY_RUN-style flags -> (gin files, bindings)."""
  files = [arg.split('=', 1)[1] for arg in args if arg.startswith('--gin_file=')]
  bindings = [' = '.join(arg[len('--gin.'):].split('=', 1)) for arg in args
              if arg.startswith('--gin.')]
  return files, bindings


def _write_prompt(path, length, fingerprint, task=None, label_words=None, width=32, seed=0):
  """A random prompt [length, width] at `path` (.npy) and its record beside it."""
  np.save(path, np.random.RandomState(seed).uniform(-2, 2, (length, width)).astype(np.float32))
  path.with_suffix('.json').write_text(json.dumps(
      {'frozen_fingerprint': fingerprint, 'frozen_path': 'random init (seed 0)', 'task': task,
       'prompt_length': length, 'embed_dim': width, 'label_words': label_words, 'step': 1}))


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(folder with the task module and the prompts, the gin flags of the tiny run, the offline
  reference: a `MultiPromptEvaluator` of prompts a-d, and a rank scorer)."""
  root = tmp_path_factory.mktemp('serve')
  (root / 'serve_tasks.py').write_text(TASK_MODULE)
  sys.path.insert(0, str(root))  # For serve_tasks; the servers get it on PYTHONPATH.
  flags = [*cli.TINY_RUN, '--gin_file=runs/prompt_finetune.gin', f"--gin.MODEL_DIR='{root}'",
           "--gin.MIXTURE_OR_TASK_MODULE='serve_tasks'"]
  gin_config.parse(*_gin_of(flags))
  try:
    run, eval_data = runs.RunSetup(), evaluation.EvalConfig()
  finally:
    gin.clear_config()
  data.import_task_modules('serve_tasks')
  mesh = partitioning.create_mesh(devices=jax.devices()[:1])  # As the servers: one device.
  shapes = models.EncoderDecoderModel.batch_shapes(eval_data.task_feature_lengths, eval_data.batch_size)
  frozen, record = runs.frozen_weights(run, shapes, mesh)
  fingerprint = record['fingerprint']
  for seed, (name, task) in enumerate(TASKS.items()):
    _write_prompt(root / f'{name}.npy', 4 - (name == 'b'), fingerprint, task,
                  LABELS if name in 'ab' else None, seed=seed)
  _write_prompt(root / 'other.npy', 4, 'f' * 16, 'tiny_sentiment')  # Other frozen weights.
  _write_prompt(root / 'narrow.npy', 4, fingerprint, width=16)
  _write_prompt(root / 'long.npy', 6, fingerprint, 'tiny_sentiment')
  _write_prompt(root / 'causal.npy', 4, fingerprint, 'tiny_sentiment')  # A decoder-only adapter:
  prompt_formats.save_peft(str(root / 'causal'), np.load(root / 'causal.npy'),
                           task_type='CAUSAL_LM')
  (root / 'causal.json').rename(root / 'causal' / prompt_bank.RECORD)
  bank = prompt_bank.PromptBank(fingerprint, 32, [f'{name}={root / name}.npy' for name in TASKS])
  model = run.model.without_prompt()
  offline = multi_prompt.MultiPromptEvaluator(eval_data, model, frozen,
                                              partitioning.batch_sharding(mesh), bank, TASKS)
  score = jax.jit(lambda table, frozen, batch: model.score_batch(frozen, batch,
                                                                 prompt_table=table))

  def rank(name, texts):  # [len(texts), 2] log-likelihoods of LABELS, offline.
    task = data.get_task(TASKS[name])
    examples = [{'inputs': list(task.output_features['inputs'].vocabulary.encode(text)) + [1]}
                for text in texts]
    rows = evaluation.rank_rows(model, examples, evaluation.label_targets(task, LABELS, 4),
                                {'inputs': 16, 'targets': 4})
    batch = {key: np.pad(value, [(0, 16 - len(value)), (0, 0)]) for key, value in rows.items()}
    batch['prompt_ids'] = np.full(16, bank.ids([name])[0])
    return np.asarray(score(offline.table, frozen, batch))[:2 * len(texts)].reshape(-1, 2)

  yield root, flags, offline, rank
  sys.path.remove(str(root))


class Server:
  """A `python -m prompt_tuning.serve` process; `url` once it printed that it serves."""

  def __init__(self, root, flags, extra, name):
    specs = [arg for prompt in 'abc' for arg in ('--prompt', f'{prompt}={root / prompt}.npy')]
    env = {**cli.environment(1), 'PYTHONPATH': f'{cli.TESTS}{os.pathsep}{root}',
           'JAX_COMPILATION_CACHE_DIR': str(root / 'compilation_cache'),
           'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
    self.stderr = open(root / f'{name}.stderr', 'w')
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'prompt_tuning.serve', *flags, '--gin_file=runs/prompt_serve.gin',
         *extra, *specs, '--port=0'], stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        env=env)
    self.lines, self.url, self.stderr_path = [], None, root / f'{name}.stderr'
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line.rstrip('\n'))

  def wait_ready(self, timeout=400):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      found = [re.search(r'^serving (http://127\.0\.0\.1:\d+) ', line) for line in self.lines]
      if any(found):
        self.url = next(match[1] for match in found if match)
        return self
      if self.process.poll() is not None:
        break
      time.sleep(0.2)
    pytest.fail(f'the server did not start: {self.lines} {self.stderr_path.read_text()[-3000:]}')

  def stop(self):
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(60)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait(10)
    self._reader.join(10)
    self.stderr.close()


@pytest.fixture(scope='module')
def servers(setup):
  """(the main server, ready; the small server, starting once the main one is ready)."""
  root, flags, _, _ = setup
  started = [Server(root, flags, MAIN_SERVER, 'main')]
  try:
    started[0].wait_ready()
    started.append(Server(root, flags, SMALL_SERVER, 'small'))
    yield started
  finally:
    for server in started:
      server.stop()


@pytest.fixture(scope='module')
def server(servers):
  return servers[0]


@pytest.fixture(scope='module')
def warm_compilations(server):
  return _compilations(server)


def call(url, body=None, method=None, timeout=60):
  """(status, headers, JSON body) of one HTTP request; `body` a dict, or bytes sent as is."""
  raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=raw, method=method,
                                   headers={'Content-Type': 'application/json'})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, response.headers, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, e.headers, json.loads(e.read())


def _metric(server, name):
  with urllib.request.urlopen(f'{server.url}/metrics', timeout=30) as response:
    text = response.read().decode()
  return float(re.search(rf'^{re.escape(name)} (\S+)$', text, re.M)[1])


def _compilations(server):
  return _metric(server, 'serve_xla_compilations_total')


def predict(server, task, inputs, **options):
  return call(f'{server.url}/v1/predict', {'task': task, 'inputs': inputs, **options})


def test_concurrent_requests_for_three_tasks_get_what_offline_inference_gives(
    setup, server, warm_compilations):
  _, _, offline, rank = setup
  requests = [(name, mode, TEXTS[start:start + size])
              for name in 'abc' for mode in ('generate', 'rank') if mode == 'generate' or
              name != 'c' for start, size in ((0, 1), (1, 3), (4, 2), (0, 6))]
  with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
    answers = list(pool.map(lambda r: predict(server, r[0], r[2], mode=r[1]), requests))
  expected = {name: offline.predict_texts([(name, text) for text in TEXTS]) for name in 'abc'}
  for (name, mode, texts), (status, _, body) in zip(requests, answers):
    assert status == 200, body
    start = TEXTS.index(texts[0])
    if mode == 'generate':
      assert body['predictions'] == expected[name][start:start + len(texts)]
      assert len(body['scores']) == len(texts) and all(s < 0 for s in body['scores'])
    else:
      scores = rank(name, texts)
      assert body['labels'] == LABELS
      assert body['predictions'] == [LABELS[i] for i in scores.argmax(axis=1)]
      np.testing.assert_allclose(body['scores'], scores, rtol=1e-5, atol=1e-5)
  assert len({tuple(expected[name]) for name in 'abc'}) == 3  # Each prompt decides.
  # Some batches mixed tasks, and the mixed traffic (every bucket) compiled nothing.
  assert _metric(server, 'serve_batch_prompts_sum') > _metric(server, 'serve_batch_prompts_count')
  assert _compilations(server) == warm_compilations
  assert any(line.startswith('compiled 8 programs (') for line in server.lines)


def test_decode_options_truncation_and_listing(setup, server):
  _, _, offline, _ = setup
  status, _, full = predict(server, 'a', TEXTS)
  status_cut, _, cut = predict(server, 'a', TEXTS, max_decode_length=2)
  assert status == status_cut == 200
  assert predict(server, 'a', TEXTS, max_decode_length=4)[2] == full  # T = 4: nothing cut.
  for whole, prefix, score, cut_score in zip(full['predictions'], cut['predictions'],
                                             full['scores'], cut['scores']):
    assert whole.startswith(prefix) and cut_score >= score
  assert any(a != b for a, b in zip(full['predictions'], cut['predictions']))
  status, _, body = predict(server, 'b', [TOO_LONG], truncate=True)
  assert status == 200 and body['predictions'] == offline.predict_texts([('b', TOO_LONG)])
  status, _, listing = call(f'{server.url}/v1/prompts')
  assert status == 200 and [p['name'] for p in listing['prompts']][:3] == ['a', 'b', 'c']
  assert listing['prompts'][1]['record']['prompt_length'] == 3
  assert listing['prompts'][2]['label_words'] is None
  status, _, health = call(f'{server.url}/healthz')
  assert status == 200 and health == {'status': 'ok', 'prompts': len(listing['prompts'])}


def _refused(status_body, status, part):
  code, _, body = status_body
  assert code == status and set(body) == {'error'}, (code, body)
  assert '\n' not in body['error'] and part in body['error'], body


def test_a_prompt_added_while_serving_is_served_and_an_incompatible_one_is_refused(
    setup, server, warm_compilations):
  root, _, offline, _ = setup
  add = lambda body: call(f'{server.url}/v1/prompts', body)
  _refused(add({'name': 'x', 'path': str(root / 'other.npy')}), 400,
           'was trained on frozen weights ffffffffffffffff')
  _refused(add({'name': 'x', 'path': str(root / 'narrow.npy')}), 400, 'has width 16')
  _refused(add({'name': 'x', 'path': str(root / 'long.npy')}), 400,
           'prompt x has 6 rows but the table holds prompts of up to 4')
  _refused(add({'name': 'x', 'path': str(root / 'causal')}), 400,
           'has task_type CAUSAL_LM; this model takes SEQ_2_SEQ_LM adapters')
  _refused(add({'name': 'x', 'path': str(root / 'missing.npy')}), 400, 'does not exist')
  _refused(add({'name': 'a', 'path': str(root / 'd.npy')}), 400, 'prompt a is already served')
  _refused(add({'name': 'x'}), 400, 'the body must be {"name": NAME, "path": PATH}')
  assert predict(server, 'a', TEXTS[:1])[0] == 200  # Refusals change nothing.
  status, _, added = add({'name': 'd', 'path': str(root / 'd.npy')})
  assert status == 201 and added['task'] == 'tiny_sentiment', added
  status, _, body = predict(server, 'd', TEXTS)
  assert status == 200 and body['predictions'] == offline.predict_texts(
      [('d', text) for text in TEXTS])
  assert body['predictions'] != predict(server, 'a', TEXTS)[2]['predictions']
  assert add({'name': 'e', 'path': str(root / 'd.npy')})[0] == 201  # Row 5 of 5.
  _refused(add({'name': 'f', 'path': str(root / 'd.npy')}), 409, 'the prompt table is full')
  assert _compilations(server) == warm_compilations  # Adding a prompt compiles nothing.


@pytest.mark.parametrize('body, status, part', [
    (b'{"task": "a", ', 400, 'the body is not JSON'),
    (b'["a"]', 400, 'the body must be a JSON object'),
    ({'task': 'zz', 'inputs': ['good']}, 404, "unknown task 'zz'"),
    ({'inputs': ['good']}, 400, 'unknown task None'),
    ({'task': 'a', 'inputs': []}, 400, '"inputs" must be a non-empty list of strings'),
    ({'task': 'a', 'inputs': 'good'}, 400, '"inputs" must be a non-empty list of strings'),
    ({'task': 'a', 'inputs': ['good', '']}, 400, 'input 1 is empty'),
    ({'task': 'a', 'inputs': [TOO_LONG]}, 400, "tokens (EOS included) but TASK_FEATURE_LENGTHS"),
    ({'task': 'a', 'inputs': ['good'], 'mode': 'beam'}, 400, "unknown mode 'beam'"),
    ({'task': 'a', 'inputs': ['good'], 'temperature': 0.5}, 400,
     "unknown field(s) ['temperature']"),
    ({'task': 'a', 'inputs': ['good'], 'max_decode_length': 5}, 400, 'in 1..4'),
    ({'task': 'a', 'inputs': ['good'], 'max_decode_length': True}, 400, 'in 1..4'),
    ({'task': 'a', 'inputs': ['good'], 'max_decode_length': 2, 'mode': 'rank'}, 400,
     'with mode generate'),
    ({'task': 'a', 'inputs': ['good'], 'truncate': 'yes'}, 400, '"truncate" must be true'),
    ({'task': 'c', 'inputs': ['good'], 'mode': 'rank'}, 400, 'prompt c has no label words'),
    ({'task': 'a', 'inputs': ['good'] * 129, 'mode': 'rank'}, 413, 'needs 258 rows'),
    (None, 405, 'Method Not Allowed: GET /v1/predict'),
])
def test_each_bad_request_gets_its_status_and_one_line_then_good_ones_succeed(
    server, body, status, part):
  _refused(call(f'{server.url}/v1/predict', body), status, part)
  good_status, _, good = predict(server, 'b', TEXTS[:2], mode='rank')
  assert good_status == 200 and len(good['predictions']) == 2


def test_unknown_paths_are_json_404s(server):
  _refused(call(f'{server.url}/v2/predict', {}), 404, 'Not Found: POST /v2/predict')


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
  """Only the headers are sent (a client sending the whole body may see the connection
  closed under it, as HTTP allows)."""
  connection = http.client.HTTPConnection(*server.url[len('http://'):].split(':'), timeout=30)
  try:
    connection.putrequest('POST', '/v1/predict')
    connection.putheader('Content-Length', str(2 ** 20 + 1))
    connection.endheaders()
    response = connection.getresponse()
    status, body = response.status, json.loads(response.read())
  finally:
    connection.close()
  _refused((status, None, body), 413, 'the body is over 1048576 bytes')
  assert predict(server, 'a', TEXTS[:1])[0] == 200


def test_overload_gives_503s_then_sigterm_answers_every_accepted_request(setup, servers):
  _, _, offline, _ = setup
  small = servers[1].wait_ready()
  assert any(line.startswith('compiled 2 programs (') for line in small.lines)
  texts = [TEXTS[i % len(TEXTS)] for i in range(24)]
  expected = offline.predict_texts([('a', text) for text in texts])
  with concurrent.futures.ThreadPoolExecutor(24) as pool:
    answers = list(pool.map(lambda text: predict(small, 'a', [text]), texts))
  statuses = [status for status, _, _ in answers]
  assert set(statuses) <= {200, 503} and statuses.count(200) >= 8 and 503 in statuses, statuses
  for (status, headers, body), text, prediction in zip(answers, texts, expected):
    if status == 200:
      assert body['predictions'] == [prediction]
    else:
      assert headers['Retry-After'] == '1' and body['error'].startswith('the server is busy: ')
  assert small.process.poll() is None and call(f'{small.url}/healthz')[0] == 200

  with concurrent.futures.ThreadPoolExecutor(6) as pool:
    burst = [pool.submit(predict, small, name, [text])
             for name, text in zip('abcabc', TEXTS)]
    deadline = time.monotonic() + 30
    while _metric(small, 'serve_queue_rows') < 6:  # All six wait for the 3 s window.
      assert time.monotonic() < deadline and not any(f.done() for f in burst)
      time.sleep(0.05)
    small.process.terminate()
    time.sleep(0.5)  # uvicorn looks for the signal every 0.1 s, then closes its socket.
    with pytest.raises(urllib.error.URLError, match='Connection refused'):
      call(f'{small.url}/healthz', timeout=10)  # No new connections once stopping.
    answered = [future.result(timeout=60) for future in burst]
  assert [status for status, _, _ in answered] == [200] * 6
  assert [body['predictions'] for _, _, body in answered] == [
      offline.predict_texts([(name, text)]) for name, text in zip('abcabc', TEXTS)]
  assert small.process.wait(60) == 0
  small.stop()
  assert small.lines[-1] == 'stopped: every accepted request was answered'


def test_nothing_compiled_after_warm_up(server, warm_compilations):
  assert _compilations(server) == warm_compilations
  assert _metric(server, 'serve_batch_fill_count') > 0
