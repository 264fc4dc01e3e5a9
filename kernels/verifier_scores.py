"""Verifier scores P("Yes"), P("No") under the full-vocabulary softmax, without [B, V] logits.

Does: verifier_scores(hidden, weight, yes_id, no_id, temperature) -> (p_yes, p_no) for the
hidden states at the verification position; differentiable in hidden and weight.
Does not: validate ids or shapes (rlvfast.ops does), or pick the verification position.

Math (per row b, z = h_b W^T / T):
    lse_b = log sum_j exp(z_j)          streamed over vocabulary chunks of at most
                                         MAX_CHUNK_COLS columns: per chunk cuBLAS writes
                                         [B, Vc] logits and one Triton program per row
                                         folds them into a running (max, sum-exp) pair
    p_yes = exp(h_b . w_yes / T - lse_b) only the two lm-head rows w_yes, w_no are gathered
Backward, with upstream (g_y, g_n) and a = g_y p_yes + g_n p_no:
    d / d z_j = (-a p_j + g_y p_yes [j = yes] + g_n p_no [j = no]) / T
chunk by chunk (recomputing each chunk's logits), one Triton program per row writing G in
place, the one-hot terms folded into the same element as -a p_j: when p_yes ~ 1 the two
nearly cancel, and adding them per element (not as two separate GEMM sums) keeps fp32
gradients accurate to fp32 rounding of the small difference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from rlvfast.kernels.token_logprobs import (
    LmHeadOperands, _online_lse, acc_dtype, check_head_config, row_launch,
)

# At most this many vocabulary columns per logit chunk, and about CHUNK_ELEMS elements.
MAX_CHUNK_COLS = 32768
CHUNK_ELEMS = 2**26


# ----------------------------------------------------------------------------- kernel
@triton.jit
def _lse_update_kernel(
    logits_ptr,  # [B, Vc] unscaled logits of one vocabulary chunk, row stride stride_row
    max_ptr,  # [B] in/out: running max of z over the chunks seen so far (-inf at start)
    sumexp_ptr,  # [B] in/out: running sum of exp(z - max) (0 at start)
    stride_row,
    n_cols,  # Vc
    temperature,
    BLOCK_V: tl.constexpr,
    ACC: tl.constexpr,  # fp32, or fp64 for fp64 inputs
):
    # no register spills: measured for every launcher variant at sm_80 and sm_90 (python -m rlvfast.kernels.aot)
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    inv_t = 1.0 / tl.cast(temperature, ACC)
    m, s = _online_lse(row_ptr, n_cols, inv_t, tl.load(max_ptr + row).to(ACC), tl.load(sumexp_ptr + row).to(ACC),
                       BLOCK_V, ACC)
    tl.store(max_ptr + row, m)
    tl.store(sumexp_ptr + row, s)


@triton.jit
def _verifier_bwd_kernel(
    logits_ptr,  # [B, Vc] recomputed unscaled logits of one vocabulary chunk, row stride stride_row
    grad_logits_ptr,  # [B, Vc] out: d loss / d (h W_chunk^T); may alias logits_ptr (same stride)
    lse_ptr,  # [B] full-vocabulary log-sum-exp from the forward
    dense_coef_ptr,  # [B] -a = -(g_yes p_yes + g_no p_no)
    yes_coef_ptr,  # [B] g_yes p_yes
    no_coef_ptr,  # [B] g_no p_no
    yes_col,  # yes_id - chunk start (outside [0, Vc): not in this chunk)
    no_col,  # no_id - chunk start
    stride_row,
    n_cols,  # Vc
    temperature,
    BLOCK_V: tl.constexpr,
    ACC: tl.constexpr,
):
    # no register spills: measured for every launcher variant at sm_80 and sm_90 (python -m rlvfast.kernels.aot)
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    grad_row_ptr = grad_logits_ptr + row * stride_row
    inv_t = 1.0 / tl.cast(temperature, ACC)
    lse = tl.load(lse_ptr + row).to(ACC)
    dense = tl.load(dense_coef_ptr + row).to(ACC)
    yes_coef = tl.load(yes_coef_ptr + row).to(ACC)
    no_coef = tl.load(no_coef_ptr + row).to(ACC)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < n_cols
        z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(ACC) * inv_t
        g = dense * tl.exp(z - lse) + tl.where(cols == yes_col, yes_coef, 0.0) + tl.where(cols == no_col, no_coef, 0.0)
        tl.store(grad_row_ptr + cols, (g * inv_t).to(grad_row_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers
def chunk_cols_for(num_rows: int, num_cols: int, chunk_cols: int | None) -> int:
    if chunk_cols is not None:
        return max(1, min(num_cols, chunk_cols))
    return min(num_cols, MAX_CHUNK_COLS, max(1024, CHUNK_ELEMS // max(num_rows, 1)))


def _vocab_chunks(num_cols: int, step: int):
    for start in range(0, num_cols, step):
        yield slice(start, min(start + step, num_cols))


def _chunk_logits(ops: LmHeadOperands, cols: slice) -> torch.Tensor:
    w = ops.weight[cols]  # (Vc, H)
    if ops.is_low_precision:
        return torch.mm(ops.hidden, w.T, out_dtype=ops.compute_dtype)  # (B, Vc)
    return torch.mm(ops.hidden, w.T)  # (B, Vc)


def verifier_lse(ops: LmHeadOperands, temperature: float, chunk_cols: int | None) -> torch.Tensor:
    num_rows, num_cols = ops.hidden.shape[0], ops.weight.shape[0]
    running_max = torch.full((num_rows,), float("-inf"), dtype=ops.compute_dtype, device=ops.hidden.device)
    running_sum = torch.zeros_like(running_max)  # (B,)
    step = chunk_cols_for(num_rows, num_cols, chunk_cols)
    for cols in _vocab_chunks(num_cols, step):
        logits = _chunk_logits(ops, cols)  # (B, Vc)
        launch = row_launch(logits.shape[1])
        _lse_update_kernel[(num_rows,)](logits, running_max, running_sum, logits.stride(0), logits.shape[1],
                                        temperature, BLOCK_V=launch.block_v, ACC=acc_dtype(ops.compute_dtype),
                                        num_warps=launch.num_warps)
    return running_max + torch.log(running_sum)  # (B,)


def _pair_logits(ops: LmHeadOperands, ids: list[int], temperature: float) -> torch.Tensor:
    w = ops.weight[ids].to(ops.compute_dtype)  # (2, H)
    return (ops.hidden.to(ops.compute_dtype) @ w.T) / temperature  # (B, 2)


def verifier_backward(ops: LmHeadOperands, ids: list[int], lse: torch.Tensor, probs: torch.Tensor,
                      grad_probs: torch.Tensor, cfg: "VerifierConfig", needs_hidden: bool, needs_weight: bool):
    num_rows, num_cols = ops.hidden.shape[0], ops.weight.shape[0]
    cd = ops.compute_dtype
    onehot_coef = (grad_probs * probs).contiguous()  # (B, 2): g_y p_yes, g_n p_no
    dense_coef = -onehot_coef.sum(dim=1)  # (B,): -a
    yes_coef, no_coef = onehot_coef[:, 0].contiguous(), onehot_coef[:, 1].contiguous()  # (B,)
    grad_hidden = torch.zeros_like(ops.hidden, dtype=cd) if needs_hidden else None  # (B, H)
    grad_weight = torch.empty_like(ops.weight, dtype=cd) if needs_weight else None  # (V, H)
    for cols in _vocab_chunks(num_cols, chunk_cols_for(num_rows, num_cols, cfg.chunk_cols)):
        logits = _chunk_logits(ops, cols)  # (B, Vc)
        grad_logits = ops.grad_buffer(logits)  # (B, Vc)
        launch = row_launch(logits.shape[1])
        _verifier_bwd_kernel[(num_rows,)](logits, grad_logits, lse, dense_coef, yes_coef, no_coef,
                                          ids[0] - cols.start, ids[1] - cols.start, logits.stride(0),
                                          logits.shape[1], cfg.temperature,
                                          BLOCK_V=launch.block_v, ACC=acc_dtype(cd), num_warps=launch.num_warps)
        if grad_hidden is not None:
            grad_hidden += torch.mm(grad_logits, ops.weight[cols]).to(cd)  # (B, H)
        if grad_weight is not None:
            grad_weight[cols] = torch.mm(grad_logits.T, ops.hidden).to(cd)  # (Vc, H)
    return grad_hidden, grad_weight


# ----------------------------------------------------------------------------- autograd
@dataclass(slots=True, frozen=True)
class VerifierConfig:
    yes_id: int
    no_id: int
    temperature: float = 1.0
    chunk_cols: int | None = None  # vocabulary columns per logit chunk; None: chunk_cols_for

    def __post_init__(self):
        check_head_config(self, "chunk_cols")


class VerifierScoresFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, cfg: VerifierConfig):
        ops = LmHeadOperands.of(hidden, weight)
        ids = [cfg.yes_id, cfg.no_id]
        lse = verifier_lse(ops, cfg.temperature, cfg.chunk_cols)  # (B,)
        probs = torch.exp(_pair_logits(ops, ids, cfg.temperature) - lse[:, None])  # (B, 2)
        ctx.save_for_backward(hidden, weight, lse, probs)
        ctx.cfg = cfg
        return probs[:, 0].contiguous(), probs[:, 1].contiguous()

    @staticmethod
    def backward(ctx, grad_yes: torch.Tensor | None, grad_no: torch.Tensor | None):
        hidden, weight, lse, probs = ctx.saved_tensors
        cfg: VerifierConfig = ctx.cfg
        grad_probs = torch.stack([torch.zeros_like(lse) if g is None else g.to(lse.dtype)
                                  for g in (grad_yes, grad_no)], dim=1)  # (B, 2)
        ops = LmHeadOperands.of(hidden, weight)
        grad_hidden, grad_weight = verifier_backward(
            ops, [cfg.yes_id, cfg.no_id], lse, probs, grad_probs, cfg,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        grad_hidden = None if grad_hidden is None else grad_hidden.to(hidden.dtype)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None


def verifier_scores(hidden: torch.Tensor, weight: torch.Tensor, yes_id: int, no_id: int,
                    temperature: float = 1.0, *, chunk_cols: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [B, H], weight [V, H] -> (p_yes [B], p_no [B]), fp32 (fp64 for fp64 inputs).

    chunk_cols overrides the vocabulary columns per logit chunk (tests use it).
    """
    cfg = VerifierConfig(int(yes_id), int(no_id), float(temperature), chunk_cols)
    return VerifierScoresFunction.apply(hidden, weight, cfg)
