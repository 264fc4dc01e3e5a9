"""policy_loss forward + backward on the CPU: time and peak extra memory.

Cases: "plain" (the reference at float32: full [N, V] logits, log-softmax, gather, clipped
loss, autograd: what TRL does), "cpp" (the fused C++ kernel), and "liger_eager"
(Liger-Kernel's LigerFusedLinearGRPOLoss, compiled=False, no KL term) when liger_kernel is
importable. The GSPO cases (test_gspo_policy_loss_fwd_bwd) do the same with the sequence ratio
over N / 512 sequences of 512 tokens: "gspo_plain" (the reference), "gspo_cpp" (two fused C++
passes around the [N] loss) and "gspo_liger_eager" (importance_sampling_level="sequence").
The Triton kernels are not benchmarked here: on a CPU they only run in the
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
GSPO_CASES = ["gspo_plain", "gspo_cpp", "gspo_liger_eager"]
LIGER_SEQ_LEN = 512  # Liger chunks by sequence: N tokens as N / 512 sequences, one per chunk


def sequences(shape: Shape) -> tuple[int, int]:
    """(number of sequences, tokens per sequence) the benchmark cuts N tokens into."""
    num_seqs = max(1, shape.n // LIGER_SEQ_LEN)
    return num_seqs, shape.n // num_seqs


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
    elif name.startswith("gspo_"):
        loss_fn = make_gspo_loss(name, shape, x, hidden, weight)
    elif name == "liger_eager":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        loss_mod = LigerFusedLinearGRPOLoss(beta=0.0, compiled=False, use_ref_model=False, chunk_size=1,
                                            epsilon_low=0.2, epsilon_high=0.2, loss_type="dapo")
        num_seqs, seq_len = sequences(shape)
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


def make_gspo_loss(name: str, shape: Shape, x: dict, hidden: torch.Tensor, weight: torch.Tensor):
    """The loss callable of a GSPO case: every case sees the same whole sequences, one advantage each."""
    num_seqs, seq_len = sequences(shape)
    rows = num_seqs * seq_len
    h, targets, old = hidden[:rows], x["targets"][:rows], x["old_logprobs"][:rows]  # (R, H), (R,), (R,)
    seq_adv = x["advantages"][:num_seqs]  # (B,)
    if name == "gspo_liger_eager":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        loss_mod = LigerFusedLinearGRPOLoss(beta=0.0, compiled=False, use_ref_model=False, chunk_size=1,
                                            epsilon_low=0.2, epsilon_high=0.2, loss_type="grpo",
                                            importance_sampling_level="sequence")
        mask = torch.ones(num_seqs, seq_len)  # (B, T)

        def liger_loss():
            out = loss_mod(h.view(num_seqs, seq_len, shape.h), weight, targets.view(num_seqs, seq_len), mask,
                           seq_adv, old_per_token_logps=old.view(num_seqs, seq_len))
            return out[0] if isinstance(out, tuple) else out
        return liger_loss
    segment_ids = torch.arange(num_seqs).repeat_interleave(seq_len)  # (R,)
    per_token = (targets, old, seq_adv[segment_ids], torch.full((rows,), 1.0 / rows))  # Liger's "grpo" weights
    if name == "gspo_plain":
        return lambda: reference.policy_loss(h, weight, *per_token, loss_type="gspo", segment_ids=segment_ids)[0]
    if name == "gspo_cpp":
        return lambda: ops.policy_loss(h, weight, *per_token, backend="cpp", loss_type="gspo",
                                       segment_ids=segment_ids)[0]
    raise ValueError(f"unknown case {name!r}")


@pytest.mark.parametrize("case", CASES)
def test_policy_loss_fwd_bwd(benchmark, case):
    _run_case(benchmark, case)


@pytest.mark.parametrize("case", GSPO_CASES)
def test_gspo_policy_loss_fwd_bwd(benchmark, case):
    _run_case(benchmark, case)


def _run_case(benchmark, case: str) -> None:
    shape = bench_shape()
    if case.endswith("liger_eager") and not has_module("liger_kernel"):
        pytest.skip("liger_kernel is not installed (optional: pip install --no-deps liger-kernel)")
    if case.endswith("cpp") and "cpp" not in ops.available_backends("cpu"):
        pytest.skip("rlvfast._C is not built")
    if case.endswith("plain") and mem_available_bytes() < 6 * shape.logits_bytes:  # measured peak ~5.2x logits
        pytest.skip(f"plain way needs ~{5.2 * shape.logits_bytes / 2**30:.1f} GiB free")
    fn = make_case(case, shape)
    benchmark.extra_info.update(n=shape.n, h=shape.h, v=shape.v, dtype="float32", threads=torch.get_num_threads(),
                                peak_extra_mib=peak_extra_mib(__file__, case, shape))
    benchmark.pedantic(fn, rounds=bench_rounds(), iterations=1, warmup_rounds=0)
