#!/usr/bin/env python3
"""Model FLOPs of a T5 1.1 prompt-tuning (or full fine-tuning) step; a run's utilisation.

The one place model FLOPs are counted: `benchmarks/train_step.py` (with the dimensions of its
gin model) and `benchmarks/compare_peft.py` (for peft_bench.py's lines) import
`forward_flops`. Forward matmul FLOPs are counted layer by layer (projections, gated MLP,
attention scores, logits). A prompt-tuning step needs the forward pass and the activation
gradients (about one more forward) but no weight gradients: 2x forward. Full fine-tuning: 3x.
Pure Python (no jax, no torch). Usage, on JSON lines of train_step.py / peft_bench.py:

    python benchmarks/t5_flops.py RESULTS.jsonl [MATMUL.txt]   # 'matmul_bf16_tflops X'
"""

import json
import sys
from typing import NamedTuple


class Dims(NamedTuple):
  """What the FLOP count needs of a T5 encoder-decoder."""
  emb_dim: int  # E.
  mlp_dim: int  # F.
  num_encoder_layers: int
  num_decoder_layers: int
  num_heads: int  # H.
  head_dim: int  # D.
  vocab_size: int = 32128
  mlp_matrices: int = 3  # Gated (T5 1.1): wi_0, wi_1, wo; T5 1.0: 2.


# T5 1.1 sizes as peft_bench.py builds them ('tiny' is peft_bench's, not gin/models' tiny).
SIZES = {
    'tiny': Dims(64, 128, 2, 2, 2, 32),
    'small': Dims(512, 1024, 8, 8, 6, 64),
    'base': Dims(768, 2048, 12, 12, 12, 64),
    'large': Dims(1024, 2816, 24, 24, 16, 64),
    'xl': Dims(2048, 5120, 24, 24, 32, 64),
    'xxl': Dims(4096, 10240, 24, 24, 64, 64),
}


def forward_flops(dims: Dims, batch: int, inputs: int, targets: int, prompt: int) -> int:
  """Matmul FLOPs of one forward pass: 2 per multiply-add.

  Per token, each weight matrix it passes through costs 2 * rows * cols; attention adds
  QK^T and AV, 2 * 2 * keys * H * D per query. The encoder sees S = prompt + inputs
  tokens; the decoder's cross-attention keys/values project the S encoder outputs once.
  Embedding lookups, norms, softmax and the loss are not counted.
  """
  e, f, hd, v = dims.emb_dim, dims.mlp_dim, dims.num_heads * dims.head_dim, dims.vocab_size
  s, t = inputs + prompt, targets
  mlp = 2 * e * f * dims.mlp_matrices
  attn_proj = 2 * 4 * e * hd  # q, k, v, o.
  encoder = dims.num_encoder_layers * s * (attn_proj + 4 * s * hd + mlp)
  decoder = dims.num_decoder_layers * (
      t * (attn_proj + 4 * t * hd)  # Causal self-attention (full T x T counted).
      + t * 2 * 2 * e * hd + s * 2 * 2 * e * hd + t * 4 * s * hd  # Cross: q, o | k, v | scores.
      + t * mlp)
  logits = t * 2 * e * v
  return batch * (encoder + decoder + logits)


def step_flops(dims: Dims, method: str, batch: int, inputs: int, targets: int,
               prompt: int) -> int:
  """Model FLOPs of one train step: 2x forward (prompt), 3x forward (full, no prompt)."""
  if method == 'full':
    return 3 * forward_flops(dims, batch, inputs, targets, 0)
  return 2 * forward_flops(dims, batch, inputs, targets, prompt)


def line_flops(row: dict) -> int:
  """Step FLOPs of a train_step.py / peft_bench.py JSON line (train_step's own count if any)."""
  if row.get('model_flops_per_step'):
    return row['model_flops_per_step']
  return step_flops(SIZES[row['size']], row['method'], row['batch'], row['inputs'],
                    row['targets'], row.get('prompt', 0))


def main():
  rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith('{')]
  peak = None
  if len(sys.argv) > 2:
    for l in open(sys.argv[2]):
      if l.startswith('matmul_bf16_tflops'):
        peak = float(l.split()[1])
  print(f"{'size':6} {'method':7} {'ckpt':5} {'steps/s':>8} {'tok/s':>10} {'TFLOP/s':>8} "
        f"{'of_matmul':>9} {'peak_GB':>8}")
  for r in rows:
    tf = line_flops(r) * r['steps_per_s'] / 1e12
    frac = f'{tf / peak:.2f}' if peak else '-'
    print(f"{r['size']:6} {r['method']:7} {str(r.get('grad_checkpointing')):5} "
          f"{r['steps_per_s']:8.3f} {r['tokens_per_s']:10.0f} {tf:8.3f} {frac:>9} "
          f"{r['peak_mem_mb'] / 1024:8.1f}")


if __name__ == '__main__':
  main()
