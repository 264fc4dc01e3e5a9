"""Public fused ops of rlvfast, each with backend="auto"|"reference"|"cpp"|"triton"|"cuda".

auto picks Triton (or CUDA where it is faster) for CUDA tensors, the C++ kernel for CPU
tensors when rlvfast._C is built, and the PyTorch reference otherwise. Forcing a backend
that cannot run here is a ValueError. Input validation that must name a bad value lives
here, once, in front of every backend. The math itself lives in reference.py (the spec),
csrc/ (C++/CUDA) and kernels/ (Triton).
"""
from __future__ import annotations

import torch

from rlvfast import _ext
from rlvfast.ops import reference

BACKENDS = ("reference", "cpp", "triton", "cuda")
ADVANTAGE_METHODS = {"grpo": 0, "rloo": 1, "drgrpo": 2}


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


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"{op}: backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    usable = available_backends(device)
    if backend == "auto":
        if device.type == "cuda":
            return "cuda" if "cuda" in usable and op in _CUDA_PREFERRED else ("triton" if "triton" in usable else "reference")
        return "cpp" if "cpp" in usable else "reference"
    if backend not in usable:
        raise ValueError(f"{op}: backend {backend!r} is not available for {device.type} tensors here "
                         f"(available: {', '.join(usable)}); see `python -m rlvfast.info`")
    return backend


# Ops whose CUDA C++ kernel beats the Triton one on the GPU (measured; see bench/RESULTS.md).
_CUDA_PREFERRED: set[str] = set()


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
