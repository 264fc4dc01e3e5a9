"""token_logprobs forward + backward on the CPU: time and peak extra memory.

Cases: "plain" (the reference at float32: full logits, logsumexp, gather, autograd) and
"cpp" (the fused C++ kernel: chunked forward, per-chunk recompute in the backward), with
random upstream gradients for both outputs. Shape: RLVFAST_BENCH_SHAPE (fused_common.py).
Peak memory per case from a fresh subprocess, in extra_info; nothing is asserted.
"""
from __future__ import annotations

import pytest
import torch

from fused_common import Shape, bench_rounds, bench_shape, lm_head_inputs, mem_available_bytes, time_case
from rlvfast import ops
from rlvfast.ops import reference

CASES = ["plain", "cpp"]


def make_case(name: str, shape: Shape):
    x = lm_head_inputs(shape)
    hidden = x["hidden"].requires_grad_(True)
    weight = x["weight"].requires_grad_(True)
    targets = x["targets"]
    g = torch.Generator().manual_seed(1)
    grad_lp, grad_lse = torch.randn(shape.n, generator=g), torch.randn(shape.n, generator=g)
    if name == "plain":
        def run():
            return reference.token_logprobs(hidden, weight, targets)
    elif name == "cpp":
        def run():
            return ops.token_logprobs(hidden, weight, targets, backend="cpp")
    else:
        raise ValueError(f"unknown case {name!r}")

    def fwd_bwd():
        hidden.grad = weight.grad = None
        logprobs, lse = run()
        torch.autograd.backward([logprobs, lse], [grad_lp, grad_lse])
        return weight.grad

    return fwd_bwd


@pytest.mark.parametrize("case", CASES)
def test_token_logprobs_fwd_bwd(benchmark, case):
    shape = bench_shape()
    if case == "plain" and mem_available_bytes() < 6 * shape.logits_bytes:
        pytest.skip(f"plain way needs ~{5 * shape.logits_bytes / 2**30:.1f} GiB free")
    time_case(benchmark, __file__, make_case, case, shape, rounds=bench_rounds(), warmup_rounds=0,
              n=shape.n, h=shape.h, v=shape.v)
