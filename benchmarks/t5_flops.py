#!/usr/bin/env python3
"""Model FLOPs of a T5 1.1 prompt-tuning (or full fine-tuning) step, and the utilisation a run reached.

Forward matmul FLOPs are counted layer by layer (projections, gated MLP, attention scores,
logits). A prompt-tuning step needs the forward pass and the activation gradients (about one
more forward) but no weight gradients: 2x forward. Full fine-tuning: 3x forward.
Usage: t5_flops.py RESULTS.jsonl [MATMUL.txt]   (MATMUL.txt holds 'matmul_bf16_tflops X')
"""
import json, sys

SIZES = {
    "tiny": (64, 128, 2, 2, 32), "small": (512, 1024, 8, 6, 64), "base": (768, 2048, 12, 12, 64),
    "large": (1024, 2816, 24, 16, 64), "xl": (2048, 5120, 24, 32, 64), "xxl": (4096, 10240, 24, 64, 64),
}
VOCAB = 32128


def forward_flops(size, batch, inputs, targets, prompt):
    d, f, L, h, dk = SIZES[size]
    hd = h * dk
    se, sd = inputs + prompt, targets
    enc = L * se * (8 * d * hd + 6 * d * f + 4 * se * hd)
    dec = L * (sd * (12 * d * hd + 6 * d * f + 4 * sd * hd + 4 * se * hd) + se * 4 * d * hd)
    logits = sd * 2 * d * VOCAB
    return batch * (enc + dec + logits)


def step_flops(r):
    fwd = forward_flops(r["size"], r["batch"], r["inputs"], r["targets"], r.get("prompt", 0) if r["method"] != "full" else 0)
    return fwd * (3 if r["method"] == "full" else 2)


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
    peak = None
    if len(sys.argv) > 2:
        for l in open(sys.argv[2]):
            if l.startswith("matmul_bf16_tflops"):
                peak = float(l.split()[1])
    print(f"{'size':6} {'method':7} {'ckpt':5} {'steps/s':>8} {'tok/s':>10} {'TFLOP/s':>8} {'of_matmul':>9} {'peak_GB':>8}")
    for r in rows:
        tf = step_flops(r) * r["steps_per_s"] / 1e12
        frac = f"{tf / peak:.2f}" if peak else "-"
        print(f"{r['size']:6} {r['method']:7} {str(r.get('grad_checkpointing')):5} {r['steps_per_s']:8.3f} "
              f"{r['tokens_per_s']:10.0f} {tf:8.1f} {frac:>9} {r['peak_mem_mb']/1024:8.1f}")


if __name__ == "__main__":
    main()
