"""verifier_scores forward on the CPU (test-time scoring): time and peak extra memory.

Cases: "plain" (the reference at float32: full [B, V] logits, logsumexp) and "cpp" (two
lm-head rows plus a streaming log-sum-exp over vocabulary blocks). B = min(N, 256)
verification prompts of the RLVFAST_BENCH_SHAPE shape (fused_common.py), under no_grad.
Peak memory per case from a fresh subprocess, in extra_info; nothing is asserted.
"""
from __future__ import annotations

import pytest
import torch

from fused_common import Shape, bench_rounds, bench_shape, lm_head_inputs, time_case
from rlvfast import ops
from rlvfast.ops import reference

CASES = ["plain", "cpp"]
MAX_BATCH = 256  # solutions scored at once


def make_case(name: str, shape: Shape):
    x = lm_head_inputs(shape)
    hidden = x["hidden"][:MAX_BATCH].contiguous()  # (B, H)
    weight = x["weight"]
    yes_id, no_id = 9454 % shape.v, 2753 % shape.v
    if name == "plain":
        def run():
            with torch.no_grad():
                return reference.verifier_scores(hidden, weight, yes_id, no_id)
    elif name == "cpp":
        def run():
            with torch.no_grad():
                return ops.verifier_scores(hidden, weight, yes_id, no_id, backend="cpp")
    else:
        raise ValueError(f"unknown case {name!r}")
    return run


@pytest.mark.parametrize("case", CASES)
def test_verifier_scores_forward(benchmark, case):
    shape = bench_shape()
    time_case(benchmark, __file__, make_case, case, shape, rounds=max(3, bench_rounds()), warmup_rounds=1,
              b=min(shape.n, MAX_BATCH), h=shape.h, v=shape.v)
