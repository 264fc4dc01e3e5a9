"""Thin autograd wrappers around the C++ CPU kernels in csrc/cpu (torch.ops.rlvfast.*).

Each op passes one small config (temperature, clip band and loss variant, chunk size) instead of a
row of positional arguments. Inputs are assumed valid: rlvfast.ops validates them once.
chunk_rows bounds the [chunk, V] logits buffer of the fused kernels; 0 lets the kernel
size it to about 128 MiB (tests pass small values to hit the chunk boundaries cheaply).
Holds no math of its own; the reference semantics are in reference.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlvfast import _ext


@dataclass(slots=True, frozen=True)
class FusedConfig:
    temperature: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    chunk_rows: int = 0  # rows of logits per chunk; 0 = auto (about 128 MiB of logits)
    delta: float = math.inf  # policy loss: cap of the unclipped ratio (TRL's delta); inf = none
    is_cispo: bool = False  # policy loss: CISPO's detached capped weight times lp instead of the clip

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"FusedConfig.temperature must be > 0, got {self.temperature!r}")
        if self.clip_low < 0 or self.clip_high < 0:
            raise ValueError(f"FusedConfig.clip_low/clip_high must be >= 0, got "
                             f"{self.clip_low!r}/{self.clip_high!r}")
        if self.chunk_rows < 0:
            raise ValueError(f"FusedConfig.chunk_rows must be >= 0 (0 = auto), got {self.chunk_rows!r}")
        if not self.delta > 1.0 + self.clip_high:
            raise ValueError(f"FusedConfig.delta must be > 1 + clip_high = {1.0 + self.clip_high} (inf: no cap), "
                             f"got {self.delta!r}")


@dataclass(slots=True, frozen=True)
class TokenBatch:
    """Per-token inputs of the policy loss, all [N]; none of them gets a gradient."""
    targets: torch.Tensor  # (N,) int64
    old_logprobs: torch.Tensor  # (N,)
    advantages: torch.Tensor  # (N,)
    weights: torch.Tensor  # (N,) mask times normalization


def _require_cpp() -> None:
    """Loads rlvfast._C (registering torch.ops.rlvfast.*) or says why it cannot."""
    if not _ext.has_cpp():
        raise RuntimeError(f"rlvfast C++ ops are not built: {_ext.cpp_error()}")


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                cfg: FusedConfig) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs, lse = torch.ops.rlvfast.token_logprobs_fwd(hidden, weight, targets, cfg.temperature,
                                                             cfg.chunk_rows)  # (N,), (N,)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.cfg = cfg
        return logprobs, lse

    @staticmethod
    def backward(ctx, grad_logprobs: torch.Tensor, grad_lse: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden, grad_weight = torch.ops.rlvfast.token_logprobs_bwd(
            grad_logprobs, grad_lse, hidden, weight, targets, lse, ctx.cfg.temperature,
            ctx.cfg.chunk_rows, need_hidden, need_weight)
        return (grad_hidden if need_hidden else None, grad_weight if need_weight else None, None, None)


class _PolicyLoss(torch.autograd.Function):
    """Gradients are computed in the forward (the loss is a scalar); backward scales them.

    The saved gradients are handed to autograd on the first backward (so a [V, H] weight
    gradient is not copied); a second backward through the same graph is an error.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, batch: TokenBatch,
                cfg: FusedConfig) -> tuple[torch.Tensor, torch.Tensor]:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, logprobs, grad_hidden, grad_weight = torch.ops.rlvfast.policy_loss_fwd(
            hidden, weight, batch.targets, batch.old_logprobs, batch.advantages, batch.weights,
            cfg.clip_low, cfg.clip_high, cfg.delta, cfg.is_cispo, cfg.temperature, cfg.chunk_rows,
            need_hidden, need_weight)
        ctx.grads = (grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(logprobs)
        return loss, logprobs

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_logprobs: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("policy_loss (cpp backend): backward ran twice through the same graph; "
                               "its gradients are precomputed in the forward and handed over once")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        grad_hidden, grad_weight = torch.ops.rlvfast.policy_loss_bwd(grad_loss, grad_hidden, grad_weight,
                                                                     *ctx.dtypes)
        return (grad_hidden if ctx.needs_input_grad[0] else None,
                grad_weight if ctx.needs_input_grad[1] else None, None, None)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   cfg: FusedConfig) -> tuple[torch.Tensor, torch.Tensor]:
    _require_cpp()
    return _TokenLogprobs.apply(hidden, weight, targets, cfg)


def _require_policy_loss_variants() -> None:
    """A _C built before delta/is_cispo joined policy_loss_fwd's schema fails here, saying so."""
    schema = str(torch.ops.rlvfast.policy_loss_fwd.default._schema)
    if "is_cispo" not in schema:
        raise RuntimeError(f"rlvfast._C is older than rlvfast/ops/cpp.py (policy_loss_fwd has no delta/is_cispo "
                           f"arguments: {schema}); rebuild it with `pip install --no-build-isolation -e .`")


def policy_loss(hidden: torch.Tensor, weight: torch.Tensor, batch: TokenBatch,
                cfg: FusedConfig) -> tuple[torch.Tensor, torch.Tensor]:
    _require_cpp()
    _require_policy_loss_variants()
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _PolicyLoss.apply(hidden, weight, batch, cfg)
    # No graph to build: the loss only, without the gradient epilogue and GEMMs 2 and 3
    # (inside Function.forward, needs_input_grad does not see no_grad, so branch here).
    loss, logprobs, _, _ = torch.ops.rlvfast.policy_loss_fwd(
        hidden.detach(), weight.detach(), batch.targets, batch.old_logprobs, batch.advantages,
        batch.weights, cfg.clip_low, cfg.clip_high, cfg.delta, cfg.is_cispo, cfg.temperature, cfg.chunk_rows,
        False, False)
    return loss, logprobs


def verifier_scores(hidden: torch.Tensor, weight: torch.Tensor, yes_id: int, no_id: int,
                    cfg: FusedConfig, block_cols: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """block_cols: vocabulary columns per streaming block, 0 = auto (about 128 MiB)."""
    _require_cpp()
    return _VerifierScores.apply(hidden, weight, (yes_id, no_id, block_cols), cfg)


class _VerifierScores(torch.autograd.Function):
    """Backward through token_logprobs_bwd with targets = yes_id, plus the "No" column.

    With upstream (g_y, g_n) and a = g_y p_yes + g_n p_no, d / d z_j (z = logits / T) is
    -a p_j + g_y p_yes [j = yes] + g_n p_no [j = no]. token_logprobs_bwd with target yes,
    g_lp = g_y p_yes and g_lse = -g_n p_no gives all but the last term (recomputing each
    chunk's logits); the [j = no] column is one rank-1 update through w_no.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, ids: tuple[int, int, int],
                cfg: FusedConfig) -> tuple[torch.Tensor, torch.Tensor]:
        yes_id, no_id, block_cols = ids
        p_yes, p_no, lse = torch.ops.rlvfast.verifier_scores_fwd(hidden, weight, yes_id, no_id,
                                                                 cfg.temperature, block_cols)  # (B,) x3
        ctx.save_for_backward(hidden, weight, lse, p_yes, p_no)
        ctx.ids, ctx.cfg = (yes_id, no_id), cfg
        return p_yes, p_no

    @staticmethod
    def backward(ctx, grad_yes: torch.Tensor, grad_no: torch.Tensor):
        hidden, weight, lse, p_yes, p_no = ctx.saved_tensors
        yes_id, no_id = ctx.ids
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g_yes = grad_yes.to(p_yes.dtype) * p_yes  # (B,)
        g_no = grad_no.to(p_no.dtype) * p_no  # (B,)
        targets = torch.full_like(lse, yes_id, dtype=torch.int64)  # (B,)
        # Both parts in the compute dtype (lse's), rounded to the input dtypes once at the end: the
        # "No" column nearly cancels the dense -a p_no term, and rounding each to bf16 first lost
        # up to 20% of such entries. (The op upcasts its inputs itself; here they come upcast.)
        h, w = hidden.to(lse.dtype), weight.to(lse.dtype)  # (B, H), (V, H)
        grad_hidden, grad_weight = torch.ops.rlvfast.token_logprobs_bwd(
            g_yes, -g_no, h, w, targets, lse, ctx.cfg.temperature, ctx.cfg.chunk_rows, need_hidden, need_weight)
        col = g_no / ctx.cfg.temperature  # (B,) d loss / d raw logit of "No"
        if need_hidden:
            grad_hidden = (grad_hidden + col[:, None] * w[no_id]).to(hidden.dtype)  # (B, H)
        if need_weight:
            grad_weight[no_id] += col @ h  # (H,)
            grad_weight = grad_weight.to(weight.dtype)  # (V, H)
        return (grad_hidden if need_hidden else None, grad_weight if need_weight else None, None, None)
