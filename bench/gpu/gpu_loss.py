"""Step `loss`: the clipped policy loss through the lm head, forward + backward, bf16 inputs.

Cases, each timed (one warm-up call, then the median of `loss_reps` calls) with its peak
device memory above the inputs:
  fused_triton   rlvfast.ops.policy_loss(backend="triton"): row chunks, no [N, V] logits
  plain_bf16     what TRL does: bf16 logits h @ W^T, fp32 log-softmax, gather, clipped loss
  plain_fp32     rlvfast.ops.reference.policy_loss: the spec, upcast to fp32 before the matmul
  liger          Liger-Kernel's LigerFusedLinearGRPOLoss (torch.compile'd on the GPU), when importable
Model FLOPs per call: 6 N H V (three GEMMs: logits, grad_hidden, grad_weight), reported as
TFLOP/s next to the H200's ~790 TFLOP/s bf16 matmul peak. The per-token loss of every case but
Liger's is `reference.clipped_token_loss` (the one spec).
"""
from __future__ import annotations

import importlib.util

import torch

from gpu_common import H200_BF16_PEAK_TFLOPS, StepContext, time_and_peak
from rlvfast import ops
from rlvfast.ops import reference

CLIP_LOW, CLIP_HIGH = 0.2, 0.2


def loss_inputs(n: int, h: int, v: int, device: torch.device) -> dict:
    """bf16 hidden (N, H) and weight (V, H) (logits ~ N(0, 1)), targets, and old log-probs near the
    current ones (ratios around 1, a few outside the clip band), advantages, weights 1/N."""
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, h, generator=g, device=device).to(torch.bfloat16)
    weight = (torch.randn(v, h, generator=g, device=device) / h ** 0.5).to(torch.bfloat16)
    targets = torch.randint(0, v, (n,), generator=g, device=device)
    with torch.no_grad():
        current, _ = ops.token_logprobs(hidden, weight, targets)  # (N,) fp32, no [N, V] held
    return dict(hidden=hidden.requires_grad_(True), weight=weight.requires_grad_(True), targets=targets,
                old_logprobs=current + 0.1 * torch.randn(n, generator=g, device=device),
                advantages=torch.randn(n, generator=g, device=device), weights=torch.full((n,), 1.0 / n, device=device))


def plain_bf16_loss(x: dict) -> torch.Tensor:
    """TRL's way: the bf16 lm head output, log-softmax in fp32, the target's log-prob."""
    logits = x["hidden"] @ x["weight"].T  # (N, V) bf16
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(1, x["targets"][:, None]).squeeze(1)  # (N,)
    per_token = reference.clipped_token_loss(logprobs, x["old_logprobs"], x["advantages"], CLIP_LOW, CLIP_HIGH)
    return (x["weights"] * per_token).sum()


def per_token_args(x: dict) -> tuple:
    return x["targets"], x["old_logprobs"], x["advantages"], x["weights"], CLIP_LOW, CLIP_HIGH


def liger_loss_fn(x: dict, seq_len: int, compiled: bool):
    """Liger's GRPO loss on the N tokens as N / seq_len sequences (one advantage per sequence),
    no KL term, token-mean ('dapo') normalization."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    module = LigerFusedLinearGRPOLoss(beta=0.0, compiled=compiled, use_ref_model=False, chunk_size=1,
                                      epsilon_low=CLIP_LOW, epsilon_high=CLIP_HIGH, loss_type="dapo")
    n, h = x["hidden"].shape
    num_seqs = n // seq_len
    shape = (num_seqs, seq_len)
    mask = torch.ones(shape, device=x["hidden"].device)

    def loss():
        out = module(x["hidden"].view(num_seqs, seq_len, h), x["weight"], x["targets"].view(shape), mask,
                     x["advantages"][:num_seqs], old_per_token_logps=x["old_logprobs"].view(shape))
        return out[0] if isinstance(out, tuple) else out
    return loss


def cases(ctx: StepContext, x: dict) -> dict:
    sizes = ctx.sizes
    out = {"fused_triton": lambda: ops.policy_loss(x["hidden"], x["weight"], *per_token_args(x), backend="triton")[0],
           "plain_bf16": lambda: plain_bf16_loss(x),
           "plain_fp32": lambda: reference.policy_loss(x["hidden"], x["weight"], *per_token_args(x))[0]}
    if importlib.util.find_spec("liger_kernel") is not None:
        out["liger"] = liger_loss_fn(x, sizes.liger_seq_len, sizes.liger_compiled)
    return out


def measure(loss_fn, x: dict, ctx: StepContext) -> dict:
    def drop_grads():
        x["hidden"].grad = x["weight"].grad = None

    n, h, v = ctx.sizes.loss
    result = time_and_peak(lambda: loss_fn().backward(), ctx.device, ctx.sizes.loss_reps, drop_grads)
    tflops = 6 * n * h * v / result["median_s"] / 1e12
    return result | {"ms": 1e3 * result["median_s"], "tflops": tflops,
                     "fraction_of_bf16_peak": tflops / H200_BF16_PEAK_TFLOPS}


def loss_step(ctx: StepContext) -> None:
    n, h, v = ctx.sizes.loss
    x = loss_inputs(n, h, v, ctx.device)
    fns = cases(ctx, x)
    ctx.record(n=n, h=h, v=v, dtype="bfloat16", model_tflop_per_call=6 * n * h * v / 1e12,
               logits_fp32_gib=n * v * 4 / 2**30, liger_importable="liger" in fns,
               liger_compiled=ctx.sizes.liger_compiled, cases={})
    failures = {}
    for name, fn in fns.items():
        ctx.log(f"loss: {name}")
        try:
            ctx.data["cases"][name] = measure(fn, x, ctx)
        except Exception as e:  # noqa: BLE001  (one case's failure keeps the others; raised below)
            failures[name] = f"{type(e).__name__}: {e}"
            ctx.data["cases"][name] = {"error": failures[name]}
        ctx.record()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    if failures:
        raise RuntimeError(f"loss cases failed: {failures}")
