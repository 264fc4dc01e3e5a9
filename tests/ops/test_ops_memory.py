"""The fused C++ CPU ops never allocate the [N, V] logits: peak resident memory, measured.

One subprocess (a clean heap) builds inputs where the float32 logits alone take 256 MiB,
then for each op resets the kernel's peak-RSS counter (/proc/self/clear_refs, "5") and reads
VmHWM - VmRSS around one forward + backward. The fused ops must stay under a quarter of
the logits' size (their [chunk, V] buffer is 16 MiB here, grad_weight 16 MiB); the plain
reference, measured the same way, must exceed the logits' size, which shows the
measurement would catch a materialized [N, V] tensor. The reference runs last: memory a
case frees may stay resident and be reused unseen by the next case, but never 256 MiB.
Measured here: policy_loss 48 MiB (grad_weight, the chunk buffer and the test's own
weight clone, 16 MiB each), token_logprobs 49 MiB, verifier_scores 11 MiB, reference 1284 MiB.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rlvfast.ops as ops

N, H, V, CHUNK = 512, 32, 131072, 32
LOGITS_BYTES = N * V * 4  # 256 MiB

SCRIPT = f"""
import gc, json, torch
from rlvfast.ops import cpp, reference
from rlvfast.ops.cpp import FusedConfig, TokenBatch
torch.manual_seed(0)
N, H, V, CHUNK = {N}, {H}, {V}, {CHUNK}

def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def peak_extra_bytes(fn):
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = status_kib("VmRSS")
    out = fn()
    peak = status_kib("VmHWM")
    del out
    return (peak - base) * 1024

hidden = torch.randn(N, H)
weight = torch.randn(V, H) * 0.2
targets = torch.randint(0, V, (N,))
batch = TokenBatch(targets, torch.full((N,), -12.0), torch.randn(N), torch.ones(N) / N)
cfg = FusedConfig(chunk_rows=CHUNK)

def grads(loss):
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss(h, w).backward()
    return h.grad, w.grad

cases = {{
    "cpp_policy_loss": lambda: grads(lambda h, w: cpp.policy_loss(h, w, batch, cfg)[0]),
    "cpp_token_logprobs": lambda: grads(lambda h, w: sum(x.sum() for x in cpp.token_logprobs(h, w, targets, cfg))),
    "cpp_verifier_scores": lambda: grads(lambda h, w: sum(p.sum() for p in cpp.verifier_scores(h, w, 1, 2, cfg, 4096))),
    "reference_policy_loss": lambda: grads(lambda h, w: reference.policy_loss(h, w, targets, batch.old_logprobs,
                                                                          batch.advantages, batch.weights)[0]),
}}
peak_extra_bytes(cases["cpp_policy_loss"])  # warm-up: first-call allocations (MKL buffers, thread pools)
print(json.dumps({{name: peak_extra_bytes(fn) for name, fn in cases.items()}}))
"""


@pytest.mark.skipif("cpp" not in ops.available_backends("cpu"), reason="rlvfast._C is not built")
def test_fused_cpu_ops_never_hold_the_logits():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak-RSS counter")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    mib = {k: round(v / 2**20, 1) for k, v in peaks.items()}
    assert peaks["reference_policy_loss"] > LOGITS_BYTES, mib  # the measurement sees [N, V]
    for name in ("cpp_policy_loss", "cpp_token_logprobs", "cpp_verifier_scores"):
        assert peaks[name] < LOGITS_BYTES / 4, (name, mib)
