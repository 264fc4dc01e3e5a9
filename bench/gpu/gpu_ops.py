"""Step `ops`: every backend of every op on the device against the float64 reference (lm-head ops in
fp32 and bf16, group_advantages in fp32 and fp64).

The inputs are rounded to the dtype first and the reference runs on those rounded values in
float64, so the error measured is the kernel's arithmetic, not the input rounding. Error: the
largest absolute difference over the largest reference magnitude, per output and gradient.
Tolerances: fp32 1e-4 (fp32 accumulation over H and V: ~1e-6 expected; TF32 GEMMs, ~1e-3, would
fail); bf16 1e-2: the outputs are fp32, but the gradients come back in bf16 (rounding <= 2^-9 of the
largest, 2e-3) after GEMMs that read the bf16 gradient of the logits (another 2^-9), so <= 4e-3 with
fp32 accumulation, while accumulating in bf16 over V would be far off. Measured on the CPU (dry run):
fp32 1.2e-6, bf16 2.6e-3. Holds no op math: rlvfast.ops and its reference.
"""
from __future__ import annotations

import torch

from gpu_common import StepContext
from rlvfast import ops
from rlvfast.ops import reference

F64 = torch.float64
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, F64: 1e-9}
YES_ID, NO_ID = 3, 7


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.to(F64)
    return float((actual.to(F64) - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def lm_head_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: torch.device) -> dict:
    """hidden (N, H), weight (V, H) with logits ~ N(0, 4), rounded to dtype; per-token data in fp32:
    old log-probs within ~0.3 of the current ones (ratios on both sides of the clip band)."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g, dtype=F64).to(dtype).to(device)
    weight = (torch.randn(v, h, generator=g, dtype=F64) * (2.0 / h ** 0.5)).to(dtype).to(device)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    noise, advantages = torch.randn(n, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64)
    weights, upstream = torch.rand(n, generator=g, dtype=F64) / n, torch.randn(2, n, generator=g, dtype=F64)
    lp, _ = reference.token_logprobs(hidden.to(F64), weight.to(F64), targets)  # (N,)
    per_token = dict(old_logprobs=lp - 0.3 * noise.to(device), advantages=advantages, weights=weights)
    return dict(hidden=hidden, weight=weight, targets=targets, upstream=upstream.to(device),
                **{k: t.to(device=device, dtype=torch.float32) for k, t in per_token.items()})


def run_op(op: str, x: dict, backend: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """[outputs..., grad_hidden, grad_weight] of one op on one backend (reference: float64)."""
    hidden = x["hidden"].to(dtype).clone().requires_grad_(True)
    weight = x["weight"].to(dtype).clone().requires_grad_(True)
    if op == "token_logprobs":
        outs = ops.token_logprobs(hidden, weight, x["targets"], backend=backend)
        scalar = (outs[0].to(F64) * x["upstream"][0] + outs[1].to(F64) * x["upstream"][1]).sum()
    elif op == "policy_loss":
        per_token = [x[k].to(dtype if dtype == F64 else torch.float32)
                     for k in ("old_logprobs", "advantages", "weights")]
        outs = ops.policy_loss(hidden, weight, x["targets"], *per_token, 0.2, 0.28, backend=backend)
        scalar = outs[0]
    else:
        outs = ops.verifier_scores(hidden, weight, YES_ID, NO_ID, backend=backend)
        scalar = (outs[0].to(F64) * x["upstream"][0] + outs[1].to(F64) * x["upstream"][1]).sum()
    scalar.backward()
    return [t.detach() for t in outs] + [hidden.grad, weight.grad]


def lm_head_cases(ctx: StepContext) -> list[dict]:
    backends = [b for b in ops.available_backends(ctx.device) if b != "cuda"]  # no CUDA C++ lm-head kernel
    n, h, v = ctx.sizes.parity
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = lm_head_inputs(n, h, v, dtype, ctx.device)
        for op in ("token_logprobs", "policy_loss", "verifier_scores"):
            expected = run_op(op, x, "reference", F64)
            for backend in backends:
                rows.append(checked(op, backend, dtype, lambda: [
                    max_rel_error(a, e) for a, e in zip(run_op(op, x, backend, dtype), expected)]))
                ctx.record(cases=rows)
    return rows


def group_advantage_cases(ctx: StepContext) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    rewards = torch.randint(0, 2, (ctx.sizes.parity_groups * 8,), generator=g).to(F64).to(ctx.device)  # groups of 8
    rows = []
    for dtype in (torch.float32, F64):
        for method in ("grpo", "rloo", "drgrpo"):
            expected = reference.group_advantages(rewards, 8, method)
            for backend in ops.available_backends(ctx.device):
                rows.append(checked(f"group_advantages/{method}", backend, dtype, lambda: [max_rel_error(
                    ops.group_advantages(rewards.to(dtype), 8, method, backend=backend), expected)]))
    return rows


def checked(op: str, backend: str, dtype: torch.dtype, errors_of) -> dict:
    """One case's row: its errors against the reference and whether they are within tolerance;
    an exception becomes a failed row naming it (reported together at the end of the step)."""
    row = {"op": op, "backend": backend, "dtype": str(dtype).removeprefix("torch."), "tolerance": TOLERANCE[dtype]}
    try:
        errors = errors_of()
    except Exception as e:  # noqa: BLE001  (recorded and raised with the others by ops_step)
        return row | {"max_error": None, "errors": [], "ok": False, "exception": f"{type(e).__name__}: {e}"}
    return row | {"max_error": max(errors), "errors": errors, "ok": max(errors) <= row["tolerance"]}


def ops_step(ctx: StepContext) -> None:
    rows = lm_head_cases(ctx) + group_advantage_cases(ctx)
    bad = [r for r in rows if not r["ok"]]
    ctx.record(cases=rows, num_cases=len(rows), num_failed=len(bad),
               backends=sorted({r["backend"] for r in rows}))
    if bad:
        raise AssertionError("outside tolerance: " + "; ".join(
            f"{r['op']} {r['backend']} {r['dtype']}: " + (r.get("exception") or f"error {r['max_error']:.2e} > "
                                                           f"{r['tolerance']:.0e}") for r in bad))
