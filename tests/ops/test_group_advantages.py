"""group_advantages on every backend for the test device (conftest.py): hand-computed examples and edge cases."""
import math

import pytest
import torch

import rlvfast.ops as ops
from conftest import CPU_ONLY, TEST_DEVICE, device_backends
from dtype_tolerances import LOW_PRECISION, SMALLEST_STEP, UNIT_ROUNDOFF
from rlvfast.ops.reference import group_advantages as reference_advantages


BACKENDS = device_backends("group_advantages")

# two groups of 4: [1, 0, 0, 1] (mean 0.5, unbiased std sqrt(1/3)) and [1, 0, 0, 0]
REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
S1 = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # grpo |adv| in group 1
S2 = math.sqrt(0.25)  # unbiased std of [1, 0, 0, 0]: sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
HAND = {
    "grpo": [S1, -S1, -S1, S1, 0.75 / (S2 + 1e-6), -0.25 / (S2 + 1e-6), -0.25 / (S2 + 1e-6), -0.25 / (S2 + 1e-6)],
    # rloo: r_i minus the mean of the other three
    "rloo": [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3, 1.0, -1 / 3, -1 / 3, -1 / 3],
    "drgrpo": [0.5, -0.5, -0.5, 0.5, 0.75, -0.25, -0.25, -0.25],
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", sorted(HAND))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_computed(backend, method, dtype):
    got = ops.group_advantages(torch.tensor(REWARDS, dtype=dtype, device=TEST_DEVICE), 4, method, backend=backend)
    assert got.dtype == dtype and got.shape == (8,)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got.cpu(), torch.tensor(HAND[method], dtype=dtype), atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", sorted(HAND))
def test_group_size_one_and_all_equal_groups_are_zero(backend, method):
    rewards = torch.tensor([1.0, 0.0, 0.5], device=TEST_DEVICE)
    assert torch.equal(ops.group_advantages(rewards, 1, method, backend=backend).cpu(), torch.zeros(3))
    # groups of 3: all-1, all-0, mixed
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0], device=TEST_DEVICE)
    got = ops.group_advantages(rewards, 3, method, backend=backend).cpu()
    assert torch.equal(got[:6], torch.zeros(6))
    assert got[6:].abs().min() > 0.1  # the mixed group is not zeroed


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_are_independent_and_sum_to_zero(backend):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (64 * 8,), generator=g).double().to(TEST_DEVICE)
    for method in ("grpo", "rloo", "drgrpo"):
        got = ops.group_advantages(rewards, 8, method, backend=backend)
        torch.testing.assert_close(got.reshape(64, 8).sum(1).cpu(), torch.zeros(64, dtype=torch.float64), atol=1e-9,
                                   rtol=0)
        ref = ops.group_advantages(rewards, 8, method, backend="reference")
        torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-9)


# bf16/fp16 rewards: every backend computes in float64 and rounds each advantage once, so the
# result is the float64 reference on the same rounded rewards within half an ulp of the dtype
# (dtype_tolerances.py; no fp32 noise here: atol is the dtype's smallest step only).
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("method", sorted(HAND))
def test_low_precision_rewards_against_float64_reference(backend, dtype, method):
    g = torch.Generator().manual_seed(1)
    rewards = torch.cat([torch.randn(5 * 8, generator=g, dtype=torch.float64),  # real-valued rewards
                         torch.ones(8, dtype=torch.float64)]).to(TEST_DEVICE, dtype)  # an all-equal group
    got = ops.group_advantages(rewards, 8, method, backend=backend)
    want = reference_advantages(rewards.double(), 8, method)
    assert got.dtype == dtype
    bound = UNIT_ROUNDOFF[dtype] * want.abs() + SMALLEST_STEP[dtype]
    assert ((got.double() - want).abs() <= bound).all(), (got, want)
    assert torch.equal(got[-8:].cpu(), torch.zeros(8, dtype=dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", sorted(HAND))
def test_groups_larger_than_one_kernel_block(backend, method):
    # 2051 rewards per group: the Triton kernel streams 1024-reward blocks (two full, one of 3)
    g = torch.Generator().manual_seed(2)
    size = 2 * 1024 + 3
    rewards = torch.cat([torch.randint(0, 2, (size,), generator=g).double(), torch.randn(size, generator=g,
                         dtype=torch.float64), torch.full((size,), 0.5, dtype=torch.float64)]).to(TEST_DEVICE)
    got = ops.group_advantages(rewards, size, method, backend=backend)
    torch.testing.assert_close(got, reference_advantages(rewards, size, method), rtol=1e-12, atol=1e-12)
    assert torch.equal(got[2 * size:].cpu(), torch.zeros(size, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_reward_names_the_index(backend, bad_value):
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, bad_value, 0.0, 0.0], device=TEST_DEVICE)
    with pytest.raises(ValueError, match=f"reward at index 5 is {bad_value}"):
        ops.group_advantages(rewards, 4, backend=backend)


@pytest.mark.parametrize("kwargs,match", [
    (dict(group_size=3), "group_size=3 must be a positive int dividing len"),
    (dict(group_size=0), "group_size=0"),
    (dict(method="ppo"), "method must be one of"),
    pytest.param(dict(backend="cuda"), "backend 'cuda' is not available for cpu tensors", marks=CPU_ONLY),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.group_advantages(torch.zeros(8, device=TEST_DEVICE), **{"group_size": 4, **kwargs})
