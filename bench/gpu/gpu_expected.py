"""What the first H200 run should show: ESTIMATES from FLOPs and bytes, not measurements.

The derivations are in bench/gpu/expected.md, which states each range here word for word
(tests/bench/test_gpu_script.py checks that). The dry run's numbers are CPU numbers at tiny
shapes: they show that the script works and are not to be read against these.
"""
EXPECTED = {
    "build.seconds": "60-150 s",
    "loss.fused_triton": "40-60 ms, 380-570 TFLOP/s, +1.5-2.5 GiB",
    "loss.plain_bf16": "55-85 ms, +23-32 GiB",
    "loss.plain_fp32": "350-600 ms, +25-40 GiB",
    "loss.liger": "300-600 ms, +1-2.5 GiB",
    "sampler.ours": "35k-70k tokens/s",
    "sampler.hf": "25k-45k tokens/s",
    "sampler.speedup": "1.2-2x",
    "sampler.verify_share": "0.3-2%",
    "train.step1": "6-25 s (compilation)",
    "train.step2": "3-5 s: 2.3-3.6 / <0.1 / 0.6-1.5 s",
    "train.outside": "10-30 s",
    "torchrun.first": "30-75 s",
    "torchrun.resume": "25-65 s",
    "torchrun.first_step": "5-20 s (a process's first)",
    "torchrun.step": "3-6 s",
    "torchrun.memory": "15-35 GiB",
    "torchrun.vs_one": "<= 1e-3",
}
