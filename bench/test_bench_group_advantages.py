"""group_advantages on the CPU: time for 64k groups of 16 rewards (1M rollouts).

Cases: "reference" (PyTorch, float64 internally) and "cpp" (one pass per group), each
method. Nothing is asserted; the size is fixed (it is cheap at any RLVFAST_BENCH_SHAPE).
"""
from __future__ import annotations

import pytest
import torch

from rlvfast import ops

NUM_GROUPS, GROUP_SIZE = 65536, 16


@pytest.mark.parametrize("method", ["grpo", "rloo", "drgrpo"])
@pytest.mark.parametrize("case", ["reference", "cpp"])
def test_group_advantages(benchmark, case, method):
    if case == "cpp" and "cpp" not in ops.available_backends("cpu"):
        pytest.skip("rlvfast._C is not built")
    rewards = torch.randint(0, 2, (NUM_GROUPS * GROUP_SIZE,), generator=torch.Generator().manual_seed(0)).float()
    benchmark.extra_info.update(num_groups=NUM_GROUPS, group_size=GROUP_SIZE)
    benchmark.pedantic(ops.group_advantages, args=(rewards, GROUP_SIZE, method), kwargs=dict(backend=case),
                       rounds=5, iterations=1, warmup_rounds=1)
