"""Fused clipped policy-gradient loss through the lm head, without the [N, V] logits.

Does: policy_loss(hidden, weight, targets, old_logprobs, advantages, weights, clip_low,
clip_high, temperature) -> (loss, logprobs), with gradients to hidden and weight, all
computed in the forward (the loss is a scalar, so the backward only scales them).
Does not: validate inputs, differentiate through old_logprobs/advantages/weights (they
are data), or normalize (weights carry the mask and any 1/num_tokens factor).

Math (per row n; logits z = h W^T / T; lse and lp as in token_logprobs.py):
    r   = exp(lp - old)
    l   = -min(min(r, delta) A, clip(r, 1 - clip_low, 1 + clip_high) A)     (delta = inf: no cap)
    loss = sum_n w_n l_n
    d loss / d lp = -w A r   where the unclipped term is the min (r A <= clip(r) A) and r <= delta,
                    0        elsewhere (the loss is constant in r there)
  or, CISPO (is_cispo): l = -sg(min(r, 1 + clip_high)) A lp, d loss / d lp = -w A min(r, 1 + clip_high).
GSPO's sequence ratio is not here: it needs every token's lp first (rlvfast.ops runs two passes).
    G_j = d loss / d lp * (onehot_j - p_j) / T              (d loss / d (h W^T))
One Triton program per row of a [C, V] logit chunk: pass 1 streams the LSE, then this
epilogue, then pass 2 overwrites the chunk with G; two GEMMs turn G into grad_h and grad_W.
Three GEMMs per chunk in all, the minimum for a forward + backward through the lm head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from rlvfast.kernels.token_logprobs import (
    LmHeadOperands, _row_logprob, _write_row_grad, acc_dtype, check_head_config, chunk_rows_for, row_launch,
)


# ----------------------------------------------------------------------------- kernel
@triton.jit(do_not_specialize=["is_cispo"])  # a runtime flag, not a variant of its own
def _policy_loss_kernel(
    logits_ptr,  # [C, V] unscaled logits h @ W^T of this chunk (fp32/fp64), row stride stride_row
    grad_logits_ptr,  # [C, V] out: G = d loss / d (h W^T); may alias logits_ptr; unused if not HAS_GRAD
    targets_ptr,  # [C] int64 target ids
    old_logprobs_ptr,  # [C] log-probs under the rollout policy
    advantages_ptr,  # [C] advantage per token
    weights_ptr,  # [C] per-token loss weight (mask / normalization)
    logprobs_ptr,  # [C] out: lp
    loss_ptr,  # [C] out: w * l per row (summed by the launcher)
    stride_row,
    n_cols,  # V
    clip_low,
    clip_high,
    delta,  # cap of the unclipped ratio (TRL's two-sided clip); inf: none
    is_cispo,  # 1: CISPO's detached capped weight times lp; 0: the PPO clip
    temperature,
    HAS_GRAD: tl.constexpr,  # write G (False: loss-only forward, e.g. under no_grad)
    BLOCK_V: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs
):
    # no register spills: measured for every launcher variant at sm_80 and sm_90 (python -m rlvfast.kernels.aot)
    row, row_ptr, inv_t, target, lse, lp = _row_logprob(logits_ptr, targets_ptr, stride_row, n_cols, temperature,
                                                        BLOCK_V, ACC)
    adv = tl.load(advantages_ptr + row).to(ACC)
    w = tl.load(weights_ptr + row).to(ACC)
    ratio = tl.exp(lp - tl.load(old_logprobs_ptr + row).to(ACC))
    high = 1.0 + tl.cast(clip_high, ACC)
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - tl.cast(clip_low, ACC)), high)
    unclipped_term = tl.minimum(ratio, tl.cast(delta, ACC)) * adv
    clipped_term = clipped * adv
    is_weight = tl.minimum(ratio, high)  # CISPO's, detached
    loss = tl.where(is_cispo != 0, -w * is_weight * adv * lp, -w * tl.minimum(unclipped_term, clipped_term))
    tl.store(logprobs_ptr + row, lp)
    tl.store(loss_ptr + row, loss)
    if HAS_GRAD:
        is_unclipped = (unclipped_term <= clipped_term) & (ratio <= tl.cast(delta, ACC))
        d_lp = tl.where(is_cispo != 0, -w * is_weight * adv, tl.where(is_unclipped, -w * ratio * adv, 0.0))
        _write_row_grad(row_ptr, grad_logits_ptr + row * stride_row, n_cols, target, lse, -d_lp, d_lp,
                        inv_t, BLOCK_V, ACC)


# ----------------------------------------------------------------------------- launcher
def policy_loss_forward(ops: LmHeadOperands, targets: torch.Tensor, old_logprobs: torch.Tensor,
                        advantages: torch.Tensor, weights: torch.Tensor, cfg: "PolicyLossConfig",
                        needs_hidden: bool, needs_weight: bool):
    """(loss, logprobs, grad_hidden | None, grad_weight | None), grads for d loss = 1."""
    num_rows, num_cols = ops.hidden.shape[0], ops.weight.shape[0]
    has_grad = needs_hidden or needs_weight
    logprobs = torch.empty(num_rows, dtype=ops.compute_dtype, device=ops.hidden.device)  # (N,)
    row_loss = torch.empty_like(logprobs)  # (N,)
    # both in the compute dtype: the backward scales them by the upstream gradient, then rounds once
    grad_hidden = torch.empty_like(ops.hidden, dtype=ops.compute_dtype) if needs_hidden else None  # (N, H)
    grad_weight = torch.zeros_like(ops.weight, dtype=ops.compute_dtype) if needs_weight else None  # (V, H)
    step = chunk_rows_for(num_rows, num_cols, cfg.chunk_rows)
    launch = row_launch(num_cols)
    for start in range(0, num_rows, step):
        rows = slice(start, min(start + step, num_rows))
        logits = ops.logits(rows)  # (C, V)
        grad_logits = ops.grad_buffer(logits) if has_grad else logits  # (C, V)
        _policy_loss_kernel[(logits.shape[0],)](
            logits, grad_logits, targets[rows], old_logprobs[rows], advantages[rows], weights[rows],
            logprobs[rows], row_loss[rows], logits.stride(0), num_cols,
            cfg.clip_low, cfg.clip_high, cfg.delta, int(cfg.is_cispo), cfg.temperature,
            HAS_GRAD=has_grad, BLOCK_V=launch.block_v, ACC=acc_dtype(ops.compute_dtype),
            num_warps=launch.num_warps)
        if has_grad:
            ops.accumulate_grads(rows, grad_logits, grad_hidden, grad_weight)
    return row_loss.sum(), logprobs, grad_hidden, grad_weight


def run_policy_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    old_logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                    cfg: "PolicyLossConfig", needs_hidden: bool, needs_weight: bool):
    ops = LmHeadOperands.of(hidden, weight)
    data = [t.detach().to(ops.compute_dtype).contiguous() for t in (old_logprobs, advantages, weights)]
    return policy_loss_forward(ops, targets.contiguous().long(), *data, cfg, needs_hidden, needs_weight)


# ----------------------------------------------------------------------------- autograd
@dataclass(slots=True, frozen=True)
class PolicyLossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    temperature: float = 1.0
    chunk_rows: int | None = None  # rows per logit chunk; None: CHUNK_ELEMS // V
    delta: float = math.inf  # cap of the unclipped ratio (TRL's delta); inf = none
    is_cispo: bool = False  # CISPO's detached capped weight times lp instead of the PPO clip

    def __post_init__(self):
        if not self.clip_low >= 0:
            raise ValueError(f"PolicyLossConfig.clip_low must be >= 0, got {self.clip_low!r}")
        if not self.clip_high >= 0:
            raise ValueError(f"PolicyLossConfig.clip_high must be >= 0, got {self.clip_high!r}")
        if not self.delta > 1.0 + self.clip_high:
            raise ValueError(f"PolicyLossConfig.delta must be > 1 + clip_high = {1.0 + self.clip_high} "
                             f"(inf: no cap), got {self.delta!r}")
        check_head_config(self, "chunk_rows")


class PolicyLossFunction(torch.autograd.Function):
    """The gradients are computed in the forward (the loss is a scalar), kept in the compute
    dtype, and handed to autograd on the first backward, scaled by the upstream gradient and
    rounded to the input dtypes once (rounding before scaling would round bf16 twice). A second
    backward through the same graph is an error, as for the C++ op."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                old_logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                cfg: PolicyLossConfig):
        loss, logprobs, grad_hidden, grad_weight = run_policy_loss(
            hidden, weight, targets, old_logprobs, advantages, weights, cfg,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.grads = (grad_hidden, grad_weight)  # (N, H), (V, H) in the compute dtype, or None
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(logprobs)
        return loss, logprobs

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, grad_logprobs: torch.Tensor | None):
        if ctx.grads is None:
            raise RuntimeError("policy_loss (triton backend): backward ran twice through the same graph; its "
                               "gradients are precomputed in the forward and handed over once")
        grads, ctx.grads = ctx.grads, None
        grad_hidden, grad_weight = (None if g is None else g.mul_(grad_loss.to(g.dtype)).to(dtype)
                                    for g, dtype in zip(grads, ctx.dtypes))
        return grad_hidden, grad_weight, None, None, None, None, None


def policy_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                old_logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, temperature: float = 1.0,
                *, chunk_rows: int | None = None, delta: float = math.inf,
                is_cispo: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped policy loss sum_n weights_n * l_n and the detached logprobs [N].

    hidden [N, H], weight [V, H], targets/old_logprobs/advantages/weights [N]. The loss is
    fp32 (fp64 when hidden and weight are fp64); gradients go to hidden and weight only.
    chunk_rows overrides the rows per logit chunk (tests use it to cross chunk edges); delta and
    is_cispo pick the variant (module docstring).
    """
    cfg = PolicyLossConfig(float(clip_low), float(clip_high), float(temperature), chunk_rows, float(delta),
                           bool(is_cispo))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return PolicyLossFunction.apply(hidden, weight, targets, old_logprobs, advantages, weights, cfg)
    # No graph to build (e.g. under no_grad): the loss-only kernel, no gradient pass or GEMMs.
    # (Inside autograd.Function.forward, needs_input_grad ignores no_grad, so branch here.)
    with torch.no_grad():
        loss, logprobs, _, _ = run_policy_loss(hidden, weight, targets, old_logprobs, advantages, weights, cfg,
                                               False, False)
    return loss, logprobs
