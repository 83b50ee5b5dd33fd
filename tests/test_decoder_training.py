"""Prompt tuning a decoder-only model from a Hugging Face directory, with the trainer, gin
files, seqio tasks, mesh, checkpoints and evaluation of the T5 runs: only the prompt
changes, the loss falls, 8 devices give what 1 gives, a resumed run equals an uninterrupted
one, evaluation reports decoded and rank-classified metrics, and two prompts in shared
batches give what each gives alone, also through the serving engine."""

import json

import gin
import jax
import numpy as np
import pytest
from flax import traverse_util

import cli
from conftest import registered_labels
import tiny_task  # pylint: disable=unused-import  # Registers `tiny_sentiment`, `tiny_opposite`.
from paths import VOCAB_PATH
from prompt_tuning import evaluate
from prompt_tuning import export
from prompt_tuning import gin_config
from prompt_tuning import train
from prompt_tuning.formats import hf_decoder
from prompt_tuning.inference import evaluation
from prompt_tuning.inference import serving
from prompt_tuning.model import models
from prompt_tuning.training import checkpoints
from prompt_tuning.training import data
from prompt_tuning.training import partitioning
from prompt_tuning.training import runs

FEATURES = {'inputs': 16, 'targets': 4}
TASKS = {'a': 'tiny_sentiment', 'b': 'tiny_opposite'}  # Prompt name -> the task it trains on.
LABELS = ['positive', 'negative']
PROMPT = 'decoder/prompt/prompt'


@pytest.fixture(scope='module', autouse=True)
def label_words():
  """Both tasks rank-classify (their label words registered) in this module."""
  with registered_labels(TASKS.values(), LABELS):
    yield


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  """A Hugging Face directory of a random tiny Llama (gin/models/decoder_tiny.gin: grouped-
  query attention, the T5 vocabulary), written as `save_pretrained` would."""
  gin_config.parse(['models/decoder_tiny.gin'], [])
  model = models.build_model()
  gin.clear_config()
  params = model.init(jax.random.PRNGKey(1), model.batch_shapes(FEATURES, 1))
  directory = str(tmp_path_factory.mktemp('llama'))
  hf_decoder.save_hf_directory(params, model.module.config, directory, eos_id=1)
  return directory


def _flags(hf_dir):
  return ['--gin_file=models/decoder_tiny.gin', '--gin_file=prompts/class_labels.gin',
          '--gin_file=runs/prompt_finetune.gin', "--gin.MIXTURE_OR_TASK_MODULE='tiny_task'",
          f"--gin.TASK_FEATURE_LENGTHS={FEATURES}", '--gin.BATCH_SIZE=8',
          '--gin.EVAL_BATCH_SIZE=16', '--gin.PROMPT_LENGTH=4', f"--gin.CLASS_LABELS={LABELS}",
          f"--gin.VOCABULARY_PATH='{VOCAB_PATH}'", f"--gin.INITIAL_CHECKPOINT_PATH='{hf_dir}'"]


def _parse(hf_dir, model_dir, *extra):
  """The gin of `train` on the HF directory, as its command line (`_flags`) sets it."""
  files = [arg.split('=', 1)[1] for arg in _flags(hf_dir) if arg.startswith('--gin_file')]
  bindings = [arg[len('--gin.'):] for arg in _flags(hf_dir) if arg.startswith('--gin.')]
  gin_config.parse(files, [*bindings, f"MODEL_DIR = '{model_dir}'",
                           "MIXTURE_OR_TASK_NAME = 'tiny_sentiment'", 'CHECKPOINT_PERIOD = 3',
                           'train.train.eval_data = None', 'LEARNING_RATE = 0.3', *extra])


def _prepared(hf_dir, model_dir, mesh):
  _parse(hf_dir, model_dir)
  setup = runs.RunSetup()
  shapes = setup.model.batch_shapes(FEATURES, 8)
  return runs.prepare(setup, shapes, checkpoints.CheckpointConfig(), mesh)


def _train(run, count):
  config = data.DataConfig('tiny_sentiment', FEATURES, batch_size=8,
                           feature_converter=models.build_model().feature_converter())
  batches = data.host_batches(config, 0, 1)
  losses = []
  for _ in range(count):
    batch = partitioning.host_batch_to_global(run.mesh, next(batches))
    run.state, metrics = run.steps.train_step(run.state, run.frozen, batch)
    losses.append(float(metrics['loss']))
  return losses


def test_only_the_prompt_trains_and_the_loss_falls(hf_dir, tmp_path):
  run = _prepared(hf_dir, tmp_path, partitioning.create_mesh(devices=jax.devices()[:1]))
  assert list(checkpoints.trainable_shapes(run.state.trainable)) == [PROMPT]
  losses = _train(run, 30)
  stored = traverse_util.flatten_dict(hf_decoder.load_params(hf_dir)[0], sep='/')
  frozen = traverse_util.flatten_dict(jax.device_get(run.frozen), sep='/')
  assert set(frozen) == set(stored)
  for path, value in frozen.items():
    np.testing.assert_array_equal(value, stored[path], err_msg=path)  # Bit-identical.
  assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses


def test_eight_devices_give_the_same_prompt_as_one(hf_dir, tmp_path):
  trained = []
  for name, mesh in (('one', partitioning.create_mesh(devices=jax.devices()[:1])),
                     ('eight', partitioning.create_mesh(mesh_shape=(4, 2)))):
    run = _prepared(hf_dir, tmp_path / name, mesh)
    _train(run, 4)
    gin.clear_config()
    trained.append(np.asarray(run.state.trainable['decoder']['prompt']['prompt']))
  kernel = run.frozen['decoder']['layers_0']['mlp']['wi_0']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'model')
  np.testing.assert_allclose(trained[0], trained[1], rtol=1e-4, atol=1e-6)


def test_resume_equals_an_uninterrupted_run(hf_dir, tmp_path):
  _parse(hf_dir, tmp_path / 'straight', 'TRAIN_STEPS = 6')
  train.train()
  _parse(hf_dir, tmp_path / 'resumed', 'TRAIN_STEPS = 3')
  train.train()
  _parse(hf_dir, tmp_path / 'resumed', 'TRAIN_STEPS = 6')
  train.train()
  for name in ('prompt.npy', 'initial_prompt.npy'):
    np.testing.assert_array_equal(np.load(tmp_path / 'resumed' / name),
                                  np.load(tmp_path / 'straight' / name))
  record = json.loads((tmp_path / 'resumed' / 'prompt.json').read_text())
  assert (record['prompt_length'], record['embed_dim'], record['step']) == (4, 32, 6)


def _run(hf_dir, module, run_file, *args):
  base = _flags(hf_dir) + ([f'--gin_file=runs/{run_file}'] if run_file else [])
  result = cli.run_in_process(module, None, *args, base=base)
  gin.clear_config()
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope='module')
def trained(hf_dir, tmp_path_factory):
  """{prompt name: MODEL_DIR of a finished 20-step `train` run of its task}."""
  root = tmp_path_factory.mktemp('runs')
  for seed, (name, task) in enumerate(TASKS.items()):
    _run(hf_dir, 'train', None, f"--gin.MODEL_DIR='{root / name}'",
         f"--gin.MIXTURE_OR_TASK_NAME='{task}'", '--gin.TRAIN_STEPS=20', '--gin.EVAL_PERIOD=0',
         f'--gin.data.DataConfig.seed={seed}')
  return {name: root / name for name in TASKS}


@pytest.fixture(scope='module')
def alone(hf_dir, trained):
  """{prompt name: its run's metrics from `evaluate`, alone}."""
  metrics = {}
  for name, task in TASKS.items():
    _run(hf_dir, 'evaluate', 'prompt_eval.gin', f"--gin.MODEL_DIR='{trained[name]}'",
         f"--gin.MIXTURE_OR_TASK_NAME='{task}'")
    metrics[name] = json.loads((trained[name] / 'eval' / 'metrics_20.json').read_text())
  return metrics


def test_evaluate_reports_decoded_and_ranked_metrics(alone):
  for name, task in TASKS.items():
    assert set(alone[name]) == {f'{task}/accuracy', f'{task}/rank_accuracy'}
    assert all(0.0 <= value <= 100.0 for value in alone[name].values()), alone


def test_two_prompts_in_shared_batches_report_what_each_reports(hf_dir, trained, alone,
                                                                 tmp_path):
  flags = [arg for name in TASKS for arg in ('--prompt', f'{name}={trained[name]}')]
  _run(hf_dir, 'evaluate', 'prompt_eval.gin', f"--gin.MODEL_DIR='{tmp_path}'",
       "--gin.MIXTURE_OR_TASK_NAME='tiny_sentiment'", '--gin.NUM_PARTITIONS=2', *flags)
  assert json.loads((tmp_path / 'eval' / 'prompts_metrics.json').read_text()) == {
      **alone['a'], **alone['b']}


def test_serving_engine_answers_as_offline_inference(hf_dir, trained):
  """The server's engine (mixed batches of both prompts, bucketed shapes) decodes and ranks
  as `infer`'s offline evaluator and `score_batch` on the model's own rank rows."""
  argv = _flags(hf_dir) + ['--gin_file=runs/prompt_eval.gin', "--gin.MODEL_DIR='/tmp/unused'",
                           "--gin.MIXTURE_OR_TASK_NAME='tiny_sentiment'"]
  gin_config.parse([a.split('=', 1)[1] for a in argv if a.startswith('--gin_file')],
                   [a[len('--gin.'):] for a in argv if a.startswith('--gin.')])
  setup, eval_data = runs.RunSetup(), evaluation.EvalConfig()
  gin.clear_config()
  offline = evaluate.prepare_prompts(setup, eval_data, [f'{n}={trained[n]}' for n in TASKS])
  model = setup.model.without_prompt()
  engine = serving.Engine(model, offline.frozen, offline.batch_sharding.mesh,
                          serving.fixed_table(offline.bank.table(), 8, 4), FEATURES, 16,
                          serving.ServeOptions(batch_buckets=[16], length_buckets=[16]),
                          serving.Metrics())
  engine.start()
  try:
    texts = ['the film was good', 'bad plot and very boring music', 'lovely actors']
    vocabulary = tiny_task.vocabulary
    inputs = [list(vocabulary.encode(text)) + [1] for text in texts]
    futures = {name: engine.submit([serving.Row(np.array(ids), row) for ids in inputs], name)
               for row, name in enumerate(offline.bank.names)}
    targets = [vocabulary.encode(word) + [1] for word in LABELS]
    ranked = engine.submit([serving.Row(np.array(ids), 0, t) for ids in inputs for t in targets],
                           'a').result()
  finally:
    engine.stop()
  for name, future in futures.items():
    decoded = [vocabulary.decode(tokens.tolist()) for tokens, _ in future.result()]
    assert decoded == offline.predict_texts([(name, text) for text in texts])
  rows = evaluation.rank_rows(model, [{'inputs': ids} for ids in inputs], targets, FEATURES)
  rows['prompt_ids'] = np.zeros(len(texts) * len(LABELS), np.int32)
  want = model.score_batch(offline.frozen, rows, prompt_table=offline.table)
  np.testing.assert_allclose(ranked, want, rtol=1e-5, atol=1e-5)


def test_export_writes_the_frozen_weights_as_a_hugging_face_directory(hf_dir, tmp_path):
  """`export --format=hf` of a decoder-only model: the directory it writes holds exactly the
  weights it read."""
  gin_config.parse(['models/decoder_tiny.gin'], [])
  export.export_hf(hf_dir, str(tmp_path / 'hf'))
  (written, _), (original, _) = (hf_decoder.load_params(path)
                                 for path in (str(tmp_path / 'hf'), hf_dir))
  jax.tree.map(np.testing.assert_array_equal, written, original)
