"""Plain PyTorch references of rlvfast's fused ops: the spec that tests and benchmarks import.

Readable and float64-capable; they materialize full logits where the fused kernels must
not. No chunking, no custom autograd: gradients come from PyTorch's autograd.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, method: str = "grpo",
                     eps: float = 1e-6) -> torch.Tensor:
    r = rewards.reshape(-1, group_size).to(torch.float64)  # (G, n)
    if group_size == 1:
        return torch.zeros_like(rewards)
    mean = r.mean(dim=1, keepdim=True)  # (G, 1)
    if method == "grpo":
        adv = (r - mean) / (r.std(dim=1, keepdim=True) + eps)
    elif method == "rloo":
        adv = r - (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    elif method == "drgrpo":
        adv = r - mean
    else:
        raise ValueError(f"unknown advantage method {method!r}")
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)  # (G, 1)
    adv = torch.where(all_equal, torch.zeros_like(adv), adv)
    return adv.reshape(-1).to(rewards.dtype)
