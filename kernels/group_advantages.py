"""Group-relative advantages in one Triton launch, one program per group.

Does: group_advantages(rewards, group_size, method, eps) for rewards laid out as
consecutive groups of group_size samples of the same problem.
Does not: validate (rlvfast.ops checks finiteness and divisibility), or handle groups
larger than MAX_GROUP_SIZE (one group must fit one block).

Math (per group r_1..r_n, mean m, unbiased std s = sqrt(sum (r_i - m)^2 / (n - 1))):
    grpo:   (r_i - m) / (s + eps)
    rloo:   r_i - (sum r - r_i) / (n - 1)          (leave-one-out baseline)
    drgrpo: r_i - m
Groups of size 1 and all-equal groups give 0. Computed in fp64 like the reference
(the data is tiny: one load and one store per reward).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

METHODS = {"grpo": 0, "rloo": 1, "drgrpo": 2}
MAX_GROUP_SIZE = 65536


@triton.jit
def _group_advantages_kernel(
    rewards_ptr,  # [num_groups * group_size] rewards, consecutive groups
    out_ptr,  # [num_groups * group_size] out: advantages, same dtype as rewards
    group_size,
    method,  # 0 grpo, 1 rloo, 2 drgrpo (runtime int: no recompile per method)
    eps,
    BLOCK: tl.constexpr,  # next power of two >= group_size
):
    group = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < group_size
    base = group * group_size
    r = tl.load(rewards_ptr + base + offs, mask=mask, other=0.0).to(tl.float64)
    n = tl.cast(group_size, tl.float64)
    total = tl.sum(r, axis=0)
    mean = total / n
    dev = tl.where(mask, r - mean, 0.0)
    std = tl.sqrt(tl.sum(dev * dev, axis=0) / tl.maximum(n - 1.0, 1.0))
    first = tl.load(rewards_ptr + base).to(tl.float64)
    num_different = tl.sum(tl.where(mask & (r != first), 1, 0), axis=0)

    grpo = dev / (std + tl.cast(eps, tl.float64))
    rloo = r - (total - r) / tl.maximum(n - 1.0, 1.0)
    adv = tl.where(method == 0, grpo, tl.where(method == 1, rloo, dev))
    adv = tl.where(num_different == 0, 0.0, adv)  # all-equal groups, and groups of one
    tl.store(out_ptr + base + offs, adv.to(out_ptr.dtype.element_ty), mask=mask)


def group_advantages(rewards: torch.Tensor, group_size: int, method: str = "grpo",
                     eps: float = 1e-6) -> torch.Tensor:
    """rewards [num_groups * group_size] -> advantages, same shape and dtype."""
    assert method in METHODS, method
    assert 1 <= group_size <= MAX_GROUP_SIZE and rewards.numel() % group_size == 0, group_size
    rewards = rewards.contiguous()
    out = torch.empty_like(rewards)  # (G * n,)
    num_groups = rewards.numel() // group_size
    if num_groups == 0:
        return out
    block = triton.next_power_of_2(group_size)
    _group_advantages_kernel[(num_groups,)](rewards, out, group_size, METHODS[method], eps,
                                            BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return out
