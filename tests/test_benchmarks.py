"""Benchmark scripts, untimed: paired summaries, FLOP dimensions, the GPU suite's refusal.

Nothing here times anything; `benchmarks/compare_peft.py` itself is exercised by hand (see the
README's Benchmark section).
"""

import os
import pathlib
import subprocess
import sys

import pytest

from prompt_tuning import gin_config
from prompt_tuning.model import models

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import compare_peft  # pylint: disable=g-import-not-at-top,wrong-import-position
import t5_flops  # pylint: disable=g-import-not-at-top,wrong-import-position


def _run(pair, side, steps_per_s, **extra):
  return {'pair': pair, 'side': side, 'size': 'small', 'method': 'prompt', 'batch': 8,
          'inputs': 128, 'targets': 8, 'prompt': 20, 'steps_per_s': steps_per_s,
          'tokens_per_s': steps_per_s * 8 * 136, 'peak_mem_mb': 1000.0 + pair,
          'peak_mem_kind': 'process_peak_rss', 'trainable_params': 10240,
          'total_params': 76961152, 'device_name': 'cpu', 'loss_first': 10.4,
          'loss_last': 10.4 - pair, **extra}


def _matmul(pair, tflops):
  return {'pair': pair, 'side': 'matmul', 'n': 2048, 'dtype': 'float32', 'device_name': 'cpu',
          'tflops_median': tflops}


def test_summary_is_the_median_of_per_pair_ratios_and_skips_the_warmup_pair():
  flops = t5_flops.step_flops(t5_flops.SIZES['small'], 'prompt', 8, 128, 8, 20)
  ours = [(0, 0.1), (1, 1.0), (2, 0.5), (3, 0.9)]  # Pair 2 ran while the machine was busy.
  peft = [(0, 1.0), (1, 0.25), (2, 0.25), (3, 0.2)]
  rows = []
  for (pair, a), (_, b), peak in zip(ours, peft, (9.0, 0.1, 0.3, 0.2)):
    rows += [_run(pair, 'ours', a, model_flops_per_step=flops), _run(pair, 'peft', b),
             _matmul(pair, peak)]
  summary = compare_peft.summarise(rows, ['ours', 'peft'])
  assert summary['pairs'] == 3
  assert summary['ratio'] == {'median': 4.0, 'min': 2.0, 'max': 4.5}
  assert summary['ours']['steps_per_s']['median'] == 0.9
  assert summary['matmul']['tflops']['median'] == 0.2  # Pair 0's 9.0 is not counted.
  assert summary['ours']['model_flops_per_step'] == summary['peft']['model_flops_per_step']
  assert summary['peft']['utilisation'] == pytest.approx(flops * 0.25 / 0.2e12)
  text = compare_peft.report(summary)
  assert ('ours / peft steps/s (= peft / ours step time): median 4.00x (min 2.00x, max 4.50x) '
          'over 3 pairs') in text
  assert 'measured matmul peak (2048^2 float32, cpu): 0.2 TFLOP/s' in text
  assert '10.4 -> 7.4' in text and 'warning' not in text
  rows[-2]['loss_last'] = 97.9  # PEFT's last run diverged.
  assert ('warning: the loss grew by half or more on peft: check its optimiser settings'
          in compare_peft.report(compare_peft.summarise(rows, ['ours', 'peft'])))


def test_versus_full_and_tpu_pick_their_sides():
  args = compare_peft.parse_args(['--versus', 'full'])
  assert list(compare_peft.commands(args)) == ['ours_prompt', 'ours_full', 'matmul']
  args = compare_peft.parse_args(['--device', 'tpu', '--dtype', 'bfloat16'])
  argvs = compare_peft.commands(args)
  assert list(argvs) == ['ours', 'matmul']
  assert argvs['matmul'][-4:] == ['--iters', '50', '--dtype', 'bfloat16']


@pytest.mark.parametrize('size', ['small', 'base', 'large', 'xl', 'xxl'])
def test_flop_dimensions_match_the_gin_models(size):
  gin_config.parse([gin_config.model_gin_file(size)])
  cfg = models.build_model().module.config
  assert t5_flops.SIZES[size] == t5_flops.Dims(
      cfg.emb_dim, cfg.mlp_dim, cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.num_heads,
      cfg.head_dim, cfg.vocab_size, len(cfg.mlp_activations) + 1)


def test_gpu_suite_without_a_gpu_exits_2_with_one_line():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHON=sys.executable)
  proc = subprocess.run([str(BENCHMARKS / 'gpu_suite.sh'), '/nonexistent/never_written'],
                        env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stdout.startswith('no GPU: ') and proc.stdout.count('\n') == 1, proc.stdout
