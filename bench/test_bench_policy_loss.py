"""policy_loss forward + backward on the CPU: time and peak extra memory.

Cases: "plain" (the reference at float32: full [N, V] logits, log-softmax, gather, clipped
loss, autograd: what TRL does), "cpp" (the fused C++ kernel), and "liger_eager"
(Liger-Kernel's LigerFusedLinearGRPOLoss, compiled=False, no KL term) when liger_kernel is
importable. The Triton kernels are not benchmarked here: on a CPU they only run in the
interpreter. Shape: RLVFAST_BENCH_SHAPE (see fused_common.py); peak memory is measured in
a fresh subprocess per case and stored in extra_info; nothing is asserted.
"""
from __future__ import annotations

import pytest
import torch

from fused_common import (Shape, bench_rounds, bench_shape, has_module, lm_head_inputs, mem_available_bytes,
                          peak_extra_mib)
from rlvfast import ops
from rlvfast.ops import reference

CASES = ["plain", "cpp", "liger_eager"]
LIGER_SEQ_LEN = 512  # Liger chunks by sequence: N tokens as N / 512 sequences, one per chunk


def make_case(name: str, shape: Shape):
    """A zero-argument callable running one forward + backward of case `name`."""
    x = lm_head_inputs(shape)
    hidden = x["hidden"].requires_grad_(True)
    weight = x["weight"].requires_grad_(True)
    per_token = (x["targets"], x["old_logprobs"], x["advantages"], x["weights"])

    if name == "plain":
        def loss_fn():
            return reference.policy_loss(hidden, weight, *per_token)[0]
    elif name == "cpp":
        def loss_fn():
            return ops.policy_loss(hidden, weight, *per_token, backend="cpp")[0]
    elif name == "liger_eager":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        loss_mod = LigerFusedLinearGRPOLoss(beta=0.0, compiled=False, use_ref_model=False, chunk_size=1,
                                            epsilon_low=0.2, epsilon_high=0.2, loss_type="dapo")
        num_seqs = max(1, shape.n // LIGER_SEQ_LEN)
        seq_len = shape.n // num_seqs
        rows = num_seqs * seq_len
        h3 = hidden[:rows].view(num_seqs, seq_len, shape.h)  # (B, T, H)
        ids = x["targets"][:rows].view(num_seqs, seq_len)  # (B, T)
        mask = torch.ones(num_seqs, seq_len)  # (B, T)
        adv = x["advantages"][:num_seqs]  # (B,) one advantage per sequence
        old = x["old_logprobs"][:rows].view(num_seqs, seq_len)  # (B, T)

        def loss_fn():
            out = loss_mod(h3, weight, ids, mask, adv, old_per_token_logps=old)
            return out[0] if isinstance(out, tuple) else out
    else:
        raise ValueError(f"unknown case {name!r}")

    def fwd_bwd():
        hidden.grad = weight.grad = None
        loss_fn().backward()
        return weight.grad

    return fwd_bwd


@pytest.mark.parametrize("case", CASES)
def test_policy_loss_fwd_bwd(benchmark, case):
    shape = bench_shape()
    if case == "liger_eager" and not has_module("liger_kernel"):
        pytest.skip("liger_kernel is not installed (optional: pip install --no-deps liger-kernel)")
    if case == "cpp" and "cpp" not in ops.available_backends("cpu"):
        pytest.skip("rlvfast._C is not built")
    if case == "plain" and mem_available_bytes() < 6 * shape.logits_bytes:  # measured peak ~5.2x logits
        pytest.skip(f"plain way needs ~{5.2 * shape.logits_bytes / 2**30:.1f} GiB free")
    fn = make_case(case, shape)
    benchmark.extra_info.update(n=shape.n, h=shape.h, v=shape.v, dtype="float32", threads=torch.get_num_threads(),
                                peak_extra_mib=peak_extra_mib(__file__, case, shape))
    benchmark.pedantic(fn, rounds=bench_rounds(), iterations=1, warmup_rounds=0)
