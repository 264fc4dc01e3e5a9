"""Public fused ops of rlvfast, each with backend="auto"|"reference"|"cpp"|"triton"|"cuda".

auto (auto_backend, the one rule) picks Triton for CUDA tensors, the C++ kernel for CPU tensors
when rlvfast._C is built, and the PyTorch reference otherwise. The CUDA C++ op
(group_advantages) runs only when asked for: it has not been timed against the Triton kernel on
a GPU yet. `python -m rlvfast.info` prints what auto picks per op. Forcing a backend that cannot
run here, or that has no kernel for the op, is a ValueError. Input validation that must name a bad
value lives here, once, in front of every backend. The math itself lives in reference.py (the
spec), csrc/ (C++/CUDA) and kernels/ (Triton).
"""
from __future__ import annotations

import math

import torch

from rlvfast import _ext
from rlvfast.ops import cpp, reference
from rlvfast.ops.cpp import FusedConfig, TokenBatch

BACKENDS = ("reference", "cpp", "triton", "cuda")
ADVANTAGE_METHODS = {"grpo": 0, "rloo": 1, "drgrpo": 2}
# The backends with a kernel for each op (the lm-head ops have no CUDA C++ kernel: Triton serves GPUs).
OP_BACKENDS = {
    "group_advantages": BACKENDS,
    "token_logprobs": ("reference", "cpp", "triton"),
    "policy_loss": ("reference", "cpp", "triton"),
    "verifier_scores": ("reference", "cpp", "triton"),
}
# What auto prefers, best first, by device type; any other device type gets the reference.
# CUDA: Triton for every op, the CUDA C++ group_advantages not until it is measured faster.
# CPU: Triton there is the interpreter (tests only), never picked.
AUTO_PREFERENCE = {"cuda": ("triton",), "cpu": ("cpp",)}


def available_backends(device: torch.device | str) -> list[str]:
    device = torch.device(device)
    out = ["reference"]
    if device.type == "cpu" and _ext.has_cpp():
        out.append("cpp")
    if _ext.triton_usable(device):
        out.append("triton")
    if device.type == "cuda" and _ext.has_cuda_ops():
        out.append("cuda")
    return out


def auto_backend(op: str, device_type: str, usable: list[str]) -> str:
    """The backend auto picks for `op` on tensors of device_type, given the usable backends."""
    for backend in AUTO_PREFERENCE.get(device_type, ()):
        if backend in usable and backend in OP_BACKENDS[op]:
            return backend
    return "reference"


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"{op}: backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    usable = available_backends(device)
    if backend == "auto":
        return auto_backend(op, device.type, usable)
    if backend not in usable:
        raise ValueError(f"{op}: backend {backend!r} is not available for {device.type} tensors here "
                         f"(available: {', '.join(usable)}); see `python -m rlvfast.info`")
    if backend not in OP_BACKENDS[op]:
        raise ValueError(f"{op}: backend {backend!r} has no kernel for this op; use one of "
                         f"{', '.join(OP_BACKENDS[op])} (or 'auto')")
    return backend


def group_advantages(rewards: torch.Tensor, group_size: int, method: str = "grpo", eps: float = 1e-6,
                     backend: str = "auto") -> torch.Tensor:
    """Group-relative advantages for rewards [num_groups * group_size] in consecutive groups."""
    if method not in ADVANTAGE_METHODS:
        raise ValueError(f"group_advantages: method must be one of {sorted(ADVANTAGE_METHODS)}, got {method!r}")
    if rewards.dim() != 1:
        raise ValueError(f"group_advantages: rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_advantages: group_size={group_size!r} must be a positive int dividing "
                         f"len(rewards)={rewards.numel()}")
    bad = (~torch.isfinite(rewards)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"group_advantages: reward at index {i} is {rewards[i].item()} (must be finite)")
    backend = resolve_backend(backend, rewards.device, "group_advantages")
    if backend == "cpp":
        return torch.ops.rlvfast.group_advantages(rewards, group_size, ADVANTAGE_METHODS[method], eps)
    if backend == "triton":
        from rlvfast.kernels.group_advantages import group_advantages as triton_group_advantages
        return triton_group_advantages(rewards, group_size, method, eps)
    if backend == "cuda":
        return torch.ops.rlvfast.group_advantages_cuda(rewards, group_size, ADVANTAGE_METHODS[method], eps)
    return reference.group_advantages(rewards, group_size, method, eps)


# ----------------------------------------------------------------------------- validation
def _check_lm_head(op: str, hidden: torch.Tensor, weight: torch.Tensor) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"{op}: hidden must be 2-D [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[0] < 1:
        raise ValueError(f"{op}: weight must be 2-D [V, H] with V >= 1, got shape {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"{op}: hidden H={hidden.shape[1]} does not match weight H={weight.shape[1]} "
                         f"(hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)})")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if hidden.device != weight.device:
        raise ValueError(f"{op}: hidden is on {hidden.device} but weight is on {weight.device}")


def _check_temperature(op: str, temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature!r}")


def _check_targets(op: str, targets: torch.Tensor, num_rows: int, vocab: int) -> None:
    if targets.dim() != 1 or targets.shape[0] != num_rows:
        raise ValueError(f"{op}: targets must be [N={num_rows}], got shape {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{op}: targets must be int64 (or int32), got {targets.dtype}")
    bad = ((targets < 0) | (targets >= vocab)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"{op}: target id at index {i} is {int(targets[i])}, outside [0, V={vocab})")


def _check_per_token(op: str, name: str, values: torch.Tensor, num_rows: int) -> None:
    if values.dim() != 1 or values.shape[0] != num_rows:
        raise ValueError(f"{op}: {name} must be [N={num_rows}], got shape {tuple(values.shape)}")
    if not values.is_floating_point():
        raise ValueError(f"{op}: {name} must be floating point, got {values.dtype}")
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"{op}: {name} at index {i} is {values[i].item()} (must be finite)")


def _check_token_id(op: str, name: str, token_id: int, vocab: int) -> None:
    if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < vocab:
        raise ValueError(f"{op}: {name}={token_id!r} must be an int in [0, V={vocab})")


# ----------------------------------------------------------------------------- fused lm-head ops
def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of targets [N] under softmax(hidden [N, H] @ weight[V, H]^T / T), and the lse [N].

    Float32 outputs (float64 for float64 inputs); differentiable in hidden and weight.
    """
    op = "token_logprobs"
    _check_lm_head(op, hidden, weight)
    _check_targets(op, targets, hidden.shape[0], weight.shape[0])
    _check_temperature(op, temperature)
    backend = resolve_backend(backend, hidden.device, op)
    if backend == "cpp":
        return cpp.token_logprobs(hidden, weight, targets.long(), FusedConfig(temperature=float(temperature)))
    if backend == "triton":
        from rlvfast.kernels.token_logprobs import token_logprobs as triton_token_logprobs
        return triton_token_logprobs(hidden, weight, targets.long(), float(temperature))
    return reference.token_logprobs(hidden, weight, targets, temperature)


def _check_loss_variant(op: str, loss_type: str, delta: float | None, clip_high: float,
                        segment_ids: torch.Tensor | None, num_rows: int) -> None:
    if loss_type not in reference.LOSS_TYPES:
        raise ValueError(f"{op}: loss_type must be one of {', '.join(reference.LOSS_TYPES)}, got {loss_type!r}")
    if delta is not None:
        if loss_type == "cispo":
            raise ValueError(f"{op}: delta={delta!r} caps the PPO ratio; cispo has no use for it (pass None)")
        if not (isinstance(delta, (int, float)) and 1.0 + clip_high < delta < float("inf")):
            raise ValueError(f"{op}: delta must be a finite number > 1 + clip_high = {1.0 + clip_high} "
                             f"(TRL recommends it; the cap then acts on A < 0 only), got {delta!r}")
    if loss_type != "gspo":
        return
    if segment_ids is None:
        raise ValueError(f"{op}: loss_type='gspo' needs segment_ids [N={num_rows}] (the sequence of each token)")
    if segment_ids.dim() != 1 or segment_ids.shape[0] != num_rows:
        raise ValueError(f"{op}: segment_ids must be [N={num_rows}], got shape {tuple(segment_ids.shape)}")
    if segment_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{op}: segment_ids must be int64 (or int32), got {segment_ids.dtype}")
    if num_rows and int(segment_ids.min()) < 0:
        i = int((segment_ids < 0).nonzero()[0])
        raise ValueError(f"{op}: segment id at index {i} is {int(segment_ids[i])} (must be >= 0)")


def policy_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                old_logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, temperature: float = 1.0,
                backend: str = "auto", *, loss_type: str = "ppo", delta: float | None = None,
                segment_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy loss sum_i weights_i * l_i (reference.clipped_token_loss) and the detached log-probs.

    old_logprobs, advantages, weights: [N]; loss_type ppo (token ratio r_i = exp(lp_i - old_i),
    clip band [1 - clip_low, 1 + clip_high]), gspo (sequence ratio over segment_ids [N]) or
    cispo (detached clipped weight times lp); delta: TRL's cap on the unclipped ratio.
    Gradients flow to hidden and weight only.

    ppo and cispo (token-level, with or without delta) run the one-pass fused op (gradients in
    the forward, three GEMMs a chunk). gspo needs each sequence's ratio before any token's
    gradient, so it runs two fused passes around a tiny [N] reduction: token_logprobs' forward
    (LSE and log-probs), the loss of the [N] log-probs in PyTorch, and token_logprobs' backward
    (one GEMM to recompute each chunk's logits, two for the gradients); never [N, V] either way.
    """
    op = "policy_loss"
    _check_lm_head(op, hidden, weight)
    num_rows = hidden.shape[0]
    _check_targets(op, targets, num_rows, weight.shape[0])
    for name, values in (("old_logprobs", old_logprobs), ("advantages", advantages), ("weights", weights)):
        _check_per_token(op, name, values, num_rows)
    _check_temperature(op, temperature)
    for name, value in (("clip_low", clip_low), ("clip_high", clip_high)):
        if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
            raise ValueError(f"{op}: {name} must be a finite number >= 0, got {value!r}")
    _check_loss_variant(op, loss_type, delta, clip_high, segment_ids, num_rows)
    if loss_type == "gspo":
        return _two_pass_policy_loss(hidden, weight, targets, (old_logprobs, advantages, weights, segment_ids),
                                     dict(clip_low=clip_low, clip_high=clip_high, loss_type=loss_type,
                                          delta=delta), temperature, backend)
    backend = resolve_backend(backend, hidden.device, op)
    variant = dict(delta=math.inf if delta is None else float(delta), is_cispo=loss_type == "cispo")
    if backend == "cpp":
        batch = TokenBatch(targets.long(), old_logprobs, advantages, weights)
        cfg = FusedConfig(temperature=float(temperature), clip_low=float(clip_low), clip_high=float(clip_high),
                          **variant)
        return cpp.policy_loss(hidden, weight, batch, cfg)
    if backend == "triton":
        from rlvfast.kernels.policy_loss import policy_loss as triton_policy_loss
        return triton_policy_loss(hidden, weight, targets.long(), old_logprobs, advantages, weights,
                                  float(clip_low), float(clip_high), float(temperature), **variant)
    return reference.policy_loss(hidden, weight, targets, old_logprobs, advantages, weights,
                                 clip_low, clip_high, temperature, loss_type, delta)


def _two_pass_policy_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          per_token: tuple, variant: dict, temperature: float,
                          backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused log-probs (pass 1 now, pass 2 in their backward) around the [N] loss of the reference."""
    old_logprobs, advantages, weights, segment_ids = per_token
    logprobs, _ = token_logprobs(hidden, weight, targets, temperature, backend)  # (N,)
    dtype = logprobs.dtype
    losses = reference.clipped_token_loss(logprobs, old_logprobs.detach().to(dtype),
                                          advantages.detach().to(dtype), segment_ids=segment_ids,
                                          **variant)  # (N,)
    return (weights.detach().to(dtype) * losses).sum(), logprobs.detach()


def verifier_scores(hidden: torch.Tensor, weight: torch.Tensor, yes_id: int, no_id: int,
                    temperature: float = 1.0, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """P("Yes"), P("No") [B] under the full-vocabulary softmax of hidden [B, H] @ weight^T / T."""
    op = "verifier_scores"
    _check_lm_head(op, hidden, weight)
    vocab = weight.shape[0]
    _check_token_id(op, "yes_id", yes_id, vocab)
    _check_token_id(op, "no_id", no_id, vocab)
    _check_temperature(op, temperature)
    backend = resolve_backend(backend, hidden.device, op)
    if backend == "cpp":
        return cpp.verifier_scores(hidden, weight, yes_id, no_id, FusedConfig(temperature=float(temperature)))
    if backend == "triton":
        from rlvfast.kernels.verifier_scores import verifier_scores as triton_verifier_scores
        return triton_verifier_scores(hidden, weight, yes_id, no_id, float(temperature))
    return reference.verifier_scores(hidden, weight, yes_id, no_id, temperature)
