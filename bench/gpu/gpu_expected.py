"""What the first H200 run should show: ESTIMATES from FLOPs and bytes, not measurements.

The derivations are in bench/gpu/expected.md (each range here is quoted there; the dry-run test
checks that). Ceilings used: 790 TFLOP/s dense bf16 matmul and ~4.3 TB/s device copy, both
measured on this workplace's H200 (the device tool's KINDS.md); ~50 TFLOP/s for fp32 matmul
without TF32 (PyTorch's default), about 3/4 of the datasheet's 67. The dry run's numbers are
CPU numbers at tiny shapes: they show the script works, and are not to be read against these.
"""
EXPECTED = {
    "build.seconds": "60-150 s",
    "loss.fused_triton": "40-60 ms, 380-580 TFLOP/s, +2-3 GiB",
    "loss.plain_bf16": "45-80 ms, +25-40 GiB",
    "loss.plain_fp32": "400-600 ms, +35-50 GiB",
    "loss.liger": "300-700 ms, +1-3 GiB",
    "sampler.ours": "25k-90k tokens/s",
    "sampler.hf": "8k-25k tokens/s",
    "sampler.speedup": "2-4x",
    "sampler.verify_share": "0.3-2%",
    "train.step1": "10-40 s (compilation)",
    "train.step2": "3-8 s: 1.5-4 / <0.1 / 1-3 s",
    "train.outside": "20-60 s",
}
