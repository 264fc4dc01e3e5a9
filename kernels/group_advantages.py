"""Group-relative advantages in one Triton launch, one program per group.

Does: group_advantages(rewards, group_size, method, eps) for rewards laid out as
consecutive groups of group_size samples of the same problem.
Does not: validate (rlvfast.ops checks finiteness and divisibility).

Math (per group r_1..r_n, mean m, unbiased std s = sqrt(sum (r_i - m)^2 / (n - 1))):
    grpo:   (r_i - m) / (s + eps)
    rloo:   r_i - (sum r - r_i) / (n - 1)          (leave-one-out baseline)
    drgrpo: r_i - m
Groups of size 1 and all-equal groups give 0. Computed in fp64 like the reference
(the data is tiny). One program per group streams it in blocks of at most MAX_BLOCK
rewards, three passes (sum, squared deviations, write) like csrc/cuda/group_advantages.cu:
a whole group in registers spilled ~30 KB per thread at 65536 rewards (ptxas, sm_80/90).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

METHODS = {"grpo": 0, "rloo": 1, "drgrpo": 2}
MAX_BLOCK = 1024  # 1024 fp64 rewards over 4 warps: 8 per thread


@triton.jit
def _group_advantages_kernel(
    rewards_ptr,  # [num_groups * group_size] rewards, consecutive groups
    out_ptr,  # [num_groups * group_size] out: fp64 advantages (the launcher rounds them to the rewards' dtype)
    group_size,
    method,  # 0 grpo, 1 rloo, 2 drgrpo (runtime int: no recompile per method)
    eps,
    BLOCK: tl.constexpr,  # rewards per streamed block: next power of two >= group_size, at most MAX_BLOCK
):
    # no register spills: measured for every launcher variant at sm_80 and sm_90 (python -m rlvfast.kernels.aot)
    group = tl.program_id(0).to(tl.int64)
    rewards_ptr += group * group_size
    out_ptr += group * group_size
    first = tl.load(rewards_ptr).to(tl.float64)
    total = tl.zeros((), tl.float64)
    num_different = tl.zeros((), tl.int32)
    for start in range(0, group_size, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < group_size
        r = tl.load(rewards_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        total += tl.sum(r, axis=0)
        num_different += tl.sum(tl.where(mask & (r != first), 1, 0), axis=0)
    n = tl.cast(group_size, tl.float64)
    mean = total / n
    squares = tl.zeros((), tl.float64)
    for start in range(0, group_size, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < group_size
        dev = tl.where(mask, tl.load(rewards_ptr + offs, mask=mask, other=0.0).to(tl.float64) - mean, 0.0)
        squares += tl.sum(dev * dev, axis=0)
    denom = tl.maximum(n - 1.0, 1.0)
    std = tl.sqrt(squares / denom)
    for start in range(0, group_size, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < group_size
        r = tl.load(rewards_ptr + offs, mask=mask, other=0.0).to(tl.float64)
        grpo = (r - mean) / (std + tl.cast(eps, tl.float64))
        rloo = r - (total - r) / denom
        adv = tl.where(method == 0, grpo, tl.where(method == 1, rloo, r - mean))
        adv = tl.where(num_different == 0, 0.0, adv)  # all-equal groups, and groups of one
        tl.store(out_ptr + offs, adv, mask=mask)


def group_launch(group_size: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for groups of group_size: the launcher's only rule."""
    return min(MAX_BLOCK, triton.next_power_of_2(group_size)), 4


def group_advantages(rewards: torch.Tensor, group_size: int, method: str = "grpo",
                     eps: float = 1e-6) -> torch.Tensor:
    """rewards [num_groups * group_size] -> advantages, same shape and dtype."""
    assert method in METHODS, method
    assert group_size >= 1 and rewards.numel() % group_size == 0, group_size
    rewards = rewards.contiguous()
    # fp64 out, rounded to the rewards' dtype by torch (once, to nearest even, like the reference):
    # Triton 3.9's interpreter truncates fp32 -> bf16 and garbles fp64 -> bf16. The data is tiny.
    out = torch.empty_like(rewards, dtype=torch.float64)  # (G * n,)
    num_groups = rewards.numel() // group_size
    if num_groups == 0:
        return out.to(rewards.dtype)
    block, num_warps = group_launch(group_size)
    _group_advantages_kernel[(num_groups,)](rewards, out, group_size, METHODS[method], eps,
                                            BLOCK=block, num_warps=num_warps)
    return out.to(rewards.dtype)
