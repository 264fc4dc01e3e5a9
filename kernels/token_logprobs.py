"""Fused lm-head log-probabilities: log p(target) and log-sum-exp without the [N, V] logits.

Does: token_logprobs(hidden, weight, targets, temperature) -> (logprobs, lse), differentiable
in hidden and weight, and the shared chunk machinery that policy_loss.py builds on.
Does not: validate inputs (rlvfast.ops does that once), mask or ignore targets, or run
without Triton (CPU tensors need TRITON_INTERPRET=1).

Math (per row n, logits z = h_n W^T / T, T = temperature):
    lse_n = log sum_j exp(z_j)                 online max / sum-exp over V blocks, fp32
    lp_n  = z_{t_n} - lse_n
    d lp / d z_j  = onehot_j - p_j              p = softmax(z)
    d lse / d z_j = p_j
so with upstream grads (g_lp, g_lse) the logit gradient is, per row,
    G_j = ((g_lse - g_lp) p_j + g_lp onehot_j) / T          (the 1/T from z = hW^T / T)
and grad_h = G @ W, grad_W = G^T @ h.

Memory: the naive way (reference.py) holds logits and their gradient, 2 x N x V x 4 bytes
(N=16384, V=151936: 20 GB). Here the launcher walks row chunks of C rows: cuBLAS writes
one [C, V] fp32 logit chunk, one Triton program per row streams it in BLOCK_V blocks
(two reads: the LSE pass and the gradient pass) and overwrites it with G, then two GEMMs
consume G. Peak extra memory is one chunk (chunk_rows * V, ~0.5 GiB by default) plus a
fp32 grad_W accumulator when the weight is bf16/fp16. The forward saves only lse [N];
the backward recomputes each chunk's logits (one extra GEMM) since (g_lp, g_lse) are
only known then.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Bound on the elements of one [chunk_rows, V] logit chunk: 2**27 fp32 = 512 MiB
# (V=151936 -> 883 rows per chunk, N=16384 -> 19 chunks).
CHUNK_ELEMS = 2**27
MAX_BLOCK_V = 4096


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _online_lse(row_ptr, n_cols, inv_temperature, m, s, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """Folds z_j = row_j * inv_temperature, j < n_cols, into a running (m, s) and returns it.

    m: running max of z, s: running sum of exp(z - m) (-inf and 0 before any column);
    streamed over BLOCK_V blocks. verifier_scores.py carries (m, s) across vocabulary chunks.
    """
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(row_ptr + cols, mask=cols < n_cols, other=float("-inf")).to(ACC) * inv_temperature
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    return m, s


@triton.jit
def _row_lse(row_ptr, n_cols, inv_temperature, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """log sum_j exp(row_j * inv_temperature), streamed over BLOCK_V blocks."""
    m, s = _online_lse(row_ptr, n_cols, inv_temperature, tl.full((), float("-inf"), ACC), tl.zeros((), ACC),
                       BLOCK_V, ACC)
    return m + tl.log(s)


@triton.jit
def _row_logprob(logits_ptr, targets_ptr, stride_row, n_cols, temperature, BLOCK_V: tl.constexpr,
                 ACC: tl.constexpr):
    """The prologue of a one-program-per-row lm-head kernel over a [C, V] logit chunk.

    Returns (row, row_ptr, inv_t, target, lse, lp): this program's row and its logits,
    1 / T, the row's target id, lse = log sum_j exp(z_j) and lp = z_target - lse, z = row / T.
    """
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    inv_t = 1.0 / tl.cast(temperature, ACC)
    lse = _row_lse(row_ptr, n_cols, inv_t, BLOCK_V, ACC)
    target = tl.load(targets_ptr + row)
    lp = tl.load(row_ptr + target).to(ACC) * inv_t - lse
    return row, row_ptr, inv_t, target, lse, lp


@triton.jit
def _write_row_grad(row_ptr, grad_row_ptr, n_cols, target, lse, coef_p, coef_t, inv_temperature,
                    BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """grad_row_j = (coef_p * softmax_j + coef_t * [j == target]) * inv_temperature.

    grad_row_ptr may alias row_ptr: each block is read before it is written.
    target outside [0, n_cols) adds no one-hot term.
    """
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < n_cols
        z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(ACC) * inv_temperature
        g = coef_p * tl.exp(z - lse) + tl.where(cols == target, coef_t, 0.0)
        tl.store(grad_row_ptr + cols, (g * inv_temperature).to(grad_row_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _logprobs_fwd_kernel(
    logits_ptr,  # [C, V] unscaled logits h @ W^T of this chunk (fp32/fp64), row stride stride_row
    targets_ptr,  # [C] int64 target ids
    logprobs_ptr,  # [C] out: z_target - lse
    lse_ptr,  # [C] out: log-sum-exp of logits / T
    stride_row,
    n_cols,  # V
    temperature,
    BLOCK_V: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype: fp32, or fp64 for fp64 inputs
):
    # no register spills: measured for every launcher variant at sm_80 and sm_90 (python -m rlvfast.kernels.aot)
    row, _, _, _, lse, lp = _row_logprob(logits_ptr, targets_ptr, stride_row, n_cols, temperature, BLOCK_V, ACC)
    tl.store(logprobs_ptr + row, lp)
    tl.store(lse_ptr + row, lse)


@triton.jit
def _logprobs_bwd_kernel(
    logits_ptr,  # [C, V] recomputed unscaled logits of this chunk, row stride stride_row
    grad_logits_ptr,  # [C, V] out: d loss / d (h W^T); may alias logits_ptr (same stride)
    targets_ptr,  # [C] int64 target ids
    lse_ptr,  # [C] lse saved by the forward
    grad_logprobs_ptr,  # [C] upstream grad of logprobs
    grad_lse_ptr,  # [C] upstream grad of lse
    stride_row,
    n_cols,  # V
    temperature,
    BLOCK_V: tl.constexpr,
    ACC: tl.constexpr,
):
    # no register spills: measured for every launcher variant at sm_80 and sm_90 (python -m rlvfast.kernels.aot)
    row = tl.program_id(0).to(tl.int64)
    inv_t = 1.0 / tl.cast(temperature, ACC)
    g_lp = tl.load(grad_logprobs_ptr + row).to(ACC)
    g_lse = tl.load(grad_lse_ptr + row).to(ACC)
    _write_row_grad(logits_ptr + row * stride_row, grad_logits_ptr + row * stride_row, n_cols,
                    tl.load(targets_ptr + row), tl.load(lse_ptr + row).to(ACC), g_lse - g_lp, g_lp,
                    inv_t, BLOCK_V, ACC)


# ----------------------------------------------------------------------------- launchers
def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """fp64 when both inputs are fp64, else fp32 (the reference's rule)."""
    return torch.float64 if hidden.dtype == weight.dtype == torch.float64 else torch.float32


def acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@dataclass(slots=True, frozen=True)
class RowLaunch:
    """How a one-program-per-row kernel over [rows, num_cols] values is launched."""
    block_v: int  # columns per streamed block (BLOCK_V)
    num_warps: int


def row_launch(num_cols: int) -> RowLaunch:
    """The launch of every lm-head row kernel, from the row width alone (the only rule).

    Blocks of up to MAX_BLOCK_V columns; 8 warps from 2048 columns up (16 fp32 values per
    thread at 4096), 4 below. rlvfast.kernels.aot compiles what this picks for real GPUs.
    """
    block = min(MAX_BLOCK_V, triton.next_power_of_2(num_cols))
    return RowLaunch(block, 8 if block >= 2048 else 4)


def chunk_rows_for(num_rows: int, num_cols: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, min(num_rows, chunk_rows))
    rows = max(1, CHUNK_ELEMS // num_cols)
    if rows >= 256:  # whole tiles for the GEMMs
        rows -= rows % 128
    return min(num_rows, rows)


@dataclass(slots=True)
class LmHeadOperands:
    """hidden/weight in the dtype the GEMMs run in, and the dtypes around them.

    bf16/fp16 on CUDA: GEMMs take the low-precision operands and write fp32 logits
    (torch.mm out_dtype), G is stored in the low dtype for the two gradient GEMMs.
    Anything else (fp32, fp64, mixed, CPU bf16): both operands in the compute dtype.
    """
    hidden: torch.Tensor  # (N, H)
    weight: torch.Tensor  # (V, H)
    compute_dtype: torch.dtype  # logits, lse, logprobs, grad_W accumulator

    @classmethod
    def of(cls, hidden: torch.Tensor, weight: torch.Tensor, on_gpu: bool | None = None) -> "LmHeadOperands":
        """on_gpu: do the GEMMs run on a GPU (default hidden.is_cuda; rlvfast.kernels.aot
        passes True for meta tensors to record the GPU launches)."""
        cd = compute_dtype(hidden, weight)
        low = hidden.dtype == weight.dtype and hidden.dtype in (torch.bfloat16, torch.float16)
        if not (low and (hidden.is_cuda if on_gpu is None else on_gpu)):
            hidden, weight = hidden.to(cd), weight.to(cd)
        return cls(hidden.contiguous(), weight.contiguous(), cd)

    @property
    def is_low_precision(self) -> bool:
        return self.hidden.dtype != self.compute_dtype

    def logits(self, rows: slice) -> torch.Tensor:
        """Unscaled logits of a row chunk, in the compute dtype."""
        h = self.hidden[rows]  # (C, H)
        if self.is_low_precision:
            return torch.mm(h, self.weight.T, out_dtype=self.compute_dtype)  # (C, V)
        return torch.mm(h, self.weight.T)  # (C, V)

    def grad_buffer(self, logits: torch.Tensor) -> torch.Tensor:
        """Where the kernel writes G: in place over the logits unless the GEMMs run in bf16/fp16."""
        return torch.empty_like(logits, dtype=self.hidden.dtype) if self.is_low_precision else logits

    def accumulate_grads(self, rows: slice, grad_logits: torch.Tensor, grad_hidden: torch.Tensor | None,
                         grad_weight: torch.Tensor | None) -> None:
        """grad_hidden[rows] = G @ W, rounded once to grad_hidden's dtype; grad_weight (compute
        dtype) += G^T @ h[rows]."""
        if grad_hidden is not None and grad_hidden.dtype != grad_logits.dtype:  # bf16/fp16 G, fp32 grad_hidden
            grad_hidden[rows] = torch.mm(grad_logits, self.weight, out_dtype=grad_hidden.dtype)  # (C, H)
        elif grad_hidden is not None:
            grad_hidden[rows] = torch.mm(grad_logits, self.weight)  # (C, H)
        if grad_weight is not None:
            h = self.hidden[rows]  # (C, H)
            if self.is_low_precision and has_inplace_fp32_addmm(h.device):
                torch.addmm(grad_weight, grad_logits.T, h, out_dtype=self.compute_dtype, out=grad_weight)  # (V, H)
            elif self.is_low_precision:  # one extra fp32 [V, H] temporary per chunk
                grad_weight.add_(torch.mm(grad_logits.T, h, out_dtype=self.compute_dtype))  # (V, H)
            else:
                grad_weight.addmm_(grad_logits.T, h)  # (V, H)


@functools.cache
def has_inplace_fp32_addmm(device: torch.device) -> bool:
    """Can cuBLAS accumulate bf16 @ bf16 straight into an fp32 matrix here?

    torch.addmm(c_fp32, a_bf16, b_bf16, out_dtype=fp32, out=c_fp32) needs a torch whose CUDA
    addmm.dtype_out accepts an fp32 self; without it grad_W takes an extra fp32 [V, H]
    temporary per chunk (V=151936, H=1536: 0.9 GB written and read twice per chunk).
    Probed once per device on a tiny product and checked against the fp32 result; False
    off CUDA (no cuBLAS to probe; only rlvfast.kernels.aot's meta tensors get here).
    """
    if device.type != "cuda":
        return False
    a = torch.randn(3, 5, device=device).to(torch.bfloat16)
    b = torch.randn(5, 4, device=device).to(torch.bfloat16)
    acc = torch.ones(3, 4, device=device)
    try:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    except RuntimeError as e:
        warnings.warn(f"rlvfast.kernels: in-place fp32 addmm of bf16 operands unsupported ({e}); "
                      "grad_W accumulates through an fp32 temporary per chunk", RuntimeWarning, stacklevel=2)
        return False
    expected = 1.0 + a.float() @ b.float()
    return bool(torch.allclose(acc, expected, rtol=1e-5, atol=1e-5))


def logprobs_forward(ops: LmHeadOperands, targets: torch.Tensor, temperature: float,
                     chunk_rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    num_rows, num_cols = ops.hidden.shape[0], ops.weight.shape[0]
    logprobs = torch.empty(num_rows, dtype=ops.compute_dtype, device=ops.hidden.device)  # (N,)
    lse = torch.empty_like(logprobs)  # (N,)
    step = chunk_rows_for(num_rows, num_cols, chunk_rows)
    launch = row_launch(num_cols)
    for start in range(0, num_rows, step):
        rows = slice(start, min(start + step, num_rows))
        logits = ops.logits(rows)  # (C, V)
        _logprobs_fwd_kernel[(logits.shape[0],)](
            logits, targets[rows], logprobs[rows], lse[rows], logits.stride(0), num_cols, temperature,
            BLOCK_V=launch.block_v, ACC=acc_dtype(ops.compute_dtype), num_warps=launch.num_warps)
    return logprobs, lse


def logprobs_backward(ops: LmHeadOperands, targets: torch.Tensor, lse: torch.Tensor,
                      grad_logprobs: torch.Tensor, grad_lse: torch.Tensor, temperature: float,
                      chunk_rows: int | None, needs_hidden: bool, needs_weight: bool):
    num_rows, num_cols = ops.hidden.shape[0], ops.weight.shape[0]
    grad_hidden = torch.empty_like(ops.hidden) if needs_hidden else None  # (N, H)
    grad_weight = torch.zeros_like(ops.weight, dtype=ops.compute_dtype) if needs_weight else None  # (V, H)
    step = chunk_rows_for(num_rows, num_cols, chunk_rows)
    launch = row_launch(num_cols)
    for start in range(0, num_rows, step):
        rows = slice(start, min(start + step, num_rows))
        logits = ops.logits(rows)  # (C, V)
        grad_logits = ops.grad_buffer(logits)  # (C, V)
        _logprobs_bwd_kernel[(logits.shape[0],)](
            logits, grad_logits, targets[rows], lse[rows], grad_logprobs[rows], grad_lse[rows],
            logits.stride(0), num_cols, temperature,
            BLOCK_V=launch.block_v, ACC=acc_dtype(ops.compute_dtype), num_warps=launch.num_warps)
        ops.accumulate_grads(rows, grad_logits, grad_hidden, grad_weight)
    return grad_hidden, grad_weight


# ----------------------------------------------------------------------------- autograd
def check_head_config(cfg, chunk_field: str) -> None:
    """The checks every lm-head op config shares: temperature > 0, chunk size >= 1 or None."""
    name = type(cfg).__name__
    if not cfg.temperature > 0:
        raise ValueError(f"{name}.temperature must be > 0, got {cfg.temperature!r}")
    chunk = getattr(cfg, chunk_field)
    if chunk is not None and chunk < 1:
        raise ValueError(f"{name}.{chunk_field} must be >= 1 or None, got {chunk!r}")


@dataclass(slots=True, frozen=True)
class TokenLogprobsConfig:
    temperature: float
    chunk_rows: int | None = None  # rows per logit chunk; None: CHUNK_ELEMS // V

    def __post_init__(self):
        check_head_config(self, "chunk_rows")


class TokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                cfg: TokenLogprobsConfig):
        targets = targets.contiguous().long()
        ops = LmHeadOperands.of(hidden, weight)
        logprobs, lse = logprobs_forward(ops, targets, cfg.temperature, cfg.chunk_rows)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.cfg = cfg
        return logprobs, lse

    @staticmethod
    def backward(ctx, grad_logprobs: torch.Tensor | None, grad_lse: torch.Tensor | None):
        hidden, weight, targets, lse = ctx.saved_tensors
        cfg: TokenLogprobsConfig = ctx.cfg
        grad_logprobs = torch.zeros_like(lse) if grad_logprobs is None else grad_logprobs.contiguous()
        grad_lse = torch.zeros_like(lse) if grad_lse is None else grad_lse.contiguous()
        ops = LmHeadOperands.of(hidden, weight)
        grad_hidden, grad_weight = logprobs_backward(
            ops, targets, lse, grad_logprobs, grad_lse, cfg.temperature, cfg.chunk_rows,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        grad_hidden = None if grad_hidden is None else grad_hidden.to(hidden.dtype)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0, *, chunk_rows: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N, H], weight [V, H], targets [N] -> (logprobs [N], lse [N]).

    fp32 outputs (fp64 when both inputs are fp64); differentiable in hidden and weight.
    chunk_rows overrides the rows per logit chunk (tests use it to cross chunk edges).
    """
    cfg = TokenLogprobsConfig(float(temperature), chunk_rows)
    return TokenLogprobsFunction.apply(hidden, weight, targets, cfg)
