"""Shared pieces of the fused lm-head op benchmarks (bench/test_bench_{op}.py).

The shape (RLVFAST_BENCH_SHAPE: "small" by default, "target" for the issue's N=4096,
H=896, V=151936, or "N,H,V"), float32 inputs, and the peak extra resident memory of one
case measured in a fresh subprocess (Linux: /proc/self/clear_refs resets VmHWM, then
VmHWM - VmRSS around one call), and time_case, the body each op's benchmark test shares
(skip, extra_info, timing). Holds no op math: the benchmarks import the one reference
from rlvfast.ops.reference and the kernels from rlvfast.ops.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@dataclass(slots=True, frozen=True)
class Shape:
    n: int  # tokens
    h: int  # hidden size
    v: int  # vocabulary

    @property
    def logits_bytes(self) -> int:
        return self.n * self.v * 4  # float32 [N, V]


NAMED_SHAPES = {"small": Shape(512, 256, 32768), "target": Shape(4096, 896, 151936)}


def bench_shape() -> Shape:
    name = os.environ.get("RLVFAST_BENCH_SHAPE", "small")
    if name in NAMED_SHAPES:
        return NAMED_SHAPES[name]
    try:
        n, h, v = (int(x) for x in name.split(","))
    except ValueError:
        raise ValueError(f"RLVFAST_BENCH_SHAPE must be small, target or N,H,V; got {name!r}") from None
    return Shape(n, h, v)


def bench_rounds() -> int:
    return int(os.environ.get("RLVFAST_BENCH_ROUNDS", "1" if bench_shape().n * bench_shape().v > 1e8 else "3"))


def lm_head_inputs(shape: Shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 hidden [N, H] and weight [V, H] (logits ~ N(0, 1)), targets and per-token data."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(shape.n, shape.h, generator=g)  # (N, H)
    weight = torch.randn(shape.v, shape.h, generator=g) / shape.h ** 0.5  # (V, H)
    targets = torch.randint(0, shape.v, (shape.n,), generator=g)  # (N,)
    # old log-probs = current ones + N(0, 0.1^2): ratios near 1 as in an RL update, a few
    # percent outside the clip band (so the fused kernel cannot win by skipping rows)
    old_logprobs = _current_logprobs(hidden, weight, targets) + 0.1 * torch.randn(shape.n, generator=g)
    advantages = torch.randn(shape.n, generator=g)
    weights = torch.ones(shape.n) / shape.n
    return dict(hidden=hidden, weight=weight, targets=targets, old_logprobs=old_logprobs,
                advantages=advantages, weights=weights)


def _current_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probs of the targets, cached on disk per input (minutes at the target shape)."""
    from rlvfast.ops import reference
    key = f"{hidden.shape[0]}_{hidden.shape[1]}_{weight.shape[0]}_{hidden[0, 0].item():.6f}"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "rlvfast_bench_cache" / f"logprobs_{key}.pt"
    if path.exists():
        return torch.load(path)
    with torch.no_grad():
        logprobs = torch.cat([reference.token_logprobs(hidden[i:i + 256], weight, targets[i:i + 256])[0]
                              for i in range(0, hidden.shape[0], 256)])  # (N,), 256 rows at a time
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(logprobs, path)
    return logprobs


def mem_available_bytes() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


_CHILD = """
import gc, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench_case", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
from fused_common import Shape
fn = mod.make_case(sys.argv[2], Shape(*map(int, sys.argv[3].split(","))))
def kib(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":"))
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
base = kib("VmRSS")
fn()
print(json.dumps({"peak_extra_bytes": (kib("VmHWM") - base) * 1024}))
"""


def peak_extra_mib(bench_file: str, case: str, shape: Shape) -> float | None:
    """Peak RSS growth (MiB) of one call of make_case(case, shape)() in a fresh process.

    Inputs are built before the counter is reset, so only what the call allocates counts
    (outputs and gradients included). None where /proc/self/clear_refs is missing.
    """
    if not Path("/proc/self/clear_refs").exists():
        return None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _CHILD, bench_file, case, f"{shape.n},{shape.h},{shape.v}"],
                         capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"memory run of {case} failed:\n{out.stderr[-3000:]}")
    return round(json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_bytes"] / 2**20, 1)


def time_case(benchmark, bench_file: str, make_case, case: str, shape: Shape, *, rounds: int,
              warmup_rounds: int, **info) -> None:
    """Times make_case(case, shape)() with pytest-benchmark: the body of each op's benchmark test.

    Skips the "cpp" case where rlvfast._C is not built. extra_info gets info (the shape as
    the benchmark names it), the dtype, the thread count and the case's peak extra memory
    (peak_extra_mib, from a fresh subprocess that imports make_case from bench_file).
    """
    from rlvfast import ops
    if case == "cpp" and "cpp" not in ops.available_backends("cpu"):
        pytest.skip("rlvfast._C is not built")
    fn = make_case(case, shape)
    benchmark.extra_info.update(**info, dtype="float32", threads=torch.get_num_threads(),
                                peak_extra_mib=peak_extra_mib(bench_file, case, shape))
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
