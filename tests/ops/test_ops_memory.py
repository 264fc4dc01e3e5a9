"""The fused ops never allocate the [N, V] logits: peak memory, measured.

On cpu (RLVFAST_TEST_DEVICE, conftest.py), the C++ ops: peak resident memory of a subprocess.
On cuda, the Triton ops: torch.cuda.max_memory_allocated (last test here).

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

import pytest
import torch

import rlvfast.ops as ops
from conftest import CPU_ONLY, TEST_DEVICE, peak_rss_of

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


@CPU_ONLY
@pytest.mark.skipif("cpp" not in ops.available_backends("cpu"), reason="rlvfast._C is not built")
def test_fused_cpu_ops_never_hold_the_logits():
    peaks = peak_rss_of(SCRIPT, timeout=300)
    mib = {k: round(v / 2**20, 1) for k, v in peaks.items()}
    assert peaks["reference_policy_loss"] > LOGITS_BYTES, mib  # the measurement sees [N, V]
    for name in ("cpp_policy_loss", "cpp_token_logprobs", "cpp_verifier_scores"):
        assert peaks[name] < LOGITS_BYTES / 4, (name, mib)


# CUDA: the same promise for the Triton ops, from the caching allocator's exact counters (live
# tensors, not cached blocks). N = 8192 rows at V = 131072: the fp32 logits alone take 4 GiB,
# while a fused op's largest buffer is one logit chunk (token_logprobs.CHUNK_ELEMS fp32 = 512 MiB,
# verifier_scores: 8192 x 8192 fp32 = 256 MiB) plus grad_weight and the test's weight clone
# (16 MiB each). The plain reference must exceed the logits' size, as on the CPU.
CUDA_N = 8192
CUDA_LOGITS_BYTES = CUDA_N * V * 4  # 4 GiB


def _cuda_peak_extra_bytes(fn) -> int:
    """Peak bytes allocated on the current CUDA device during fn(), above what was live before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


@pytest.mark.skipif(TEST_DEVICE != "cuda", reason="measures CUDA memory: runs with RLVFAST_TEST_DEVICE=cuda")
def test_fused_triton_ops_never_hold_the_logits_on_cuda():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(CUDA_N, H, generator=g).to(TEST_DEVICE)  # (N, H)
    weight = (torch.randn(V, H, generator=g) * 0.2).to(TEST_DEVICE)  # (V, H)
    targets = torch.randint(0, V, (CUDA_N,), generator=g).to(TEST_DEVICE)
    old = torch.full((CUDA_N,), -12.0, device=TEST_DEVICE)
    advantages = torch.randn(CUDA_N, generator=g).to(TEST_DEVICE)
    weights = torch.full((CUDA_N,), 1.0 / CUDA_N, device=TEST_DEVICE)

    def grads(loss):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss(h, w).backward()
        return h.grad, w.grad

    def policy(backend):
        return lambda: grads(lambda h, w: ops.policy_loss(h, w, targets, old, advantages, weights,
                                                          backend=backend)[0])

    cases = {
        "triton_policy_loss": policy("triton"),
        "triton_token_logprobs": lambda: grads(lambda h, w: sum(
            x.sum() for x in ops.token_logprobs(h, w, targets, backend="triton"))),
        "triton_verifier_scores": lambda: grads(lambda h, w: sum(
            p.sum() for p in ops.verifier_scores(h, w, 1, 2, backend="triton"))),
        "reference_policy_loss": policy("reference"),
    }
    peaks = {name: _cuda_peak_extra_bytes(fn) for name, fn in cases.items()}
    mib = {k: round(v / 2**20, 1) for k, v in peaks.items()}
    assert peaks["reference_policy_loss"] > CUDA_LOGITS_BYTES, mib  # the measurement sees [N, V]
    for name in ("triton_policy_loss", "triton_token_logprobs", "triton_verifier_scores"):
        assert peaks[name] < CUDA_LOGITS_BYTES / 4, (name, mib)
