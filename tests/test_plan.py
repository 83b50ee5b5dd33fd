"""The fit planner: the real train step compiled for an 8-device CPU mesh from shapes alone."""

import re

import jax
import pytest

import cli
from prompt_tuning import plan

TINY = ['--gin_file=models/t5_1_1_tiny.gin', '--gin_file=prompts/uniform.gin',
        '--gin_file=runs/prompt_finetune.gin', '--gin.PROMPT_LENGTH=4',
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 4}",
        '--gin.network.T5Config.num_encoder_layers=1',
        '--gin.network.T5Config.num_decoder_layers=1']


@pytest.fixture(scope='module', autouse=True)
def eight_devices():
  assert len(jax.devices()) == 8  # Started with conftest's 8 devices before any plan.


def printed_plan(*args):
  """(bytes per device by name, FLOPs per device) as `python -m prompt_tuning.plan` prints."""
  result = cli.run_main_in_process(plan.main, [*TINY, *args])
  assert result.returncode == 0, result.stderr
  memory = {name.strip(): int(size.replace(',', '')) for name, size in
            re.findall(r'^ +([a-z ]+?) +[\d.]+ GiB +([\d,]+) bytes$', result.stdout, re.M)}
  flops = float(re.search(r'XLA FLOPs per step: (\S+) per device', result.stdout)[1])
  return memory, flops, result.stdout


def test_plan_memory_and_flops_grow_with_the_batch():
  # gpu_8_xxl: data 2 x model 4, so the prompt, the frozen weights and the batch are all
  # laid out as a model-parallel run lays them out.
  small, small_flops, stdout = printed_plan('--gin_file=partitioning/gpu_8_xxl.gin',
                                            '--gin.BATCH_SIZE=4')
  big, big_flops, _ = printed_plan('--gin_file=partitioning/gpu_8_xxl.gin',
                                   '--gin.BATCH_SIZE=32')
  assert set(small) == {'arguments', 'outputs', 'aliased', 'temporaries', 'generated code',
                        'total'}
  assert all(small[name] > 0 for name in ('arguments', 'temporaries', 'total'))
  assert small['aliased'] > 0  # The donated state comes back in place.
  assert big['temporaries'] > small['temporaries']
  assert big_flops > 2 * small_flops > 0
  assert 'mesh data 2 x model 4' in stdout and 'fits H100 80 GB' in stdout
  assert "XLA's cpu compiler's, standing in" in stdout


def test_report_says_whether_it_fits():
  stats = plan.Plan({'arguments': 6 * plan.GIB, 'temporaries': 4 * plan.GIB,
                     'total': 10 * plan.GIB}, 1e12, 4, 'TPU v4', 1.0)
  lines = plan.report(stats, (('16 GiB', 16 * plan.GIB), ('8 GiB', 8 * plan.GIB)),
                      stand_in=False)
  assert 'fits 16 GiB (16.0 GiB): 62% used' in lines
  assert 'does NOT fit 8 GiB (8.0 GiB): 125% used' in lines
  assert 'XLA FLOPs per step: 1e+12 per device, 4e+12 in all' in lines


@pytest.mark.parametrize('args, message', [
    ((), 'plan needs a mesh preset: add --gin_file=partitioning/gpu_1.gin'),
    (('--gin_file=partitioning/gpu_8.gin', '--gin.BATCH_SIZE=4'),
     'BATCH_SIZE=4 must be a multiple of the mesh\'s data size 8'),
])
def test_plan_refuses_in_one_line(args, message):
  result = cli.run_main_in_process(plan.main, [*TINY, *args])
  assert result.returncode == 1 and message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_plan_needs_a_run_file():
  result = cli.run_main_in_process(plan.main, ['--gin_file=models/t5_1_1_tiny.gin',
                                               '--gin_file=partitioning/gpu_8.gin'])
  assert 'plan compiles a run: add its gin files' in result.stderr
