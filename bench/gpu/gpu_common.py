"""What every step of the device check shares: its context (sizes, folders, the result file it
fills as it goes) and the clocks (wall time around a synchronized device, peak device memory).

A step writes its result file after every measurement (`StepContext.record`), so a step that
is killed at its time-out still leaves what it measured. Holds no measurement itself.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpu_report import write_json
from gpu_sizes import Sizes

H200_BF16_PEAK_TFLOPS = 790.0  # dense bf16 matmul measured on this workplace's H200 (device KINDS.md)


@dataclass(slots=True)
class StepContext:
    sizes: Sizes
    repo: Path  # the repository root (pip installs it, pytest runs its tests)
    work_dir: Path  # shared by the steps of one run: the random model, the training run
    result_path: Path  # this step's JSON, rewritten by every `record`
    dry_run: bool
    data: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return torch.device(self.sizes.device)

    def record(self, **items) -> None:
        """Adds items to this step's result and writes the file at once (atomically)."""
        self.data.update(items)
        write_json(self.result_path, {"status": "running", "data": self.data})

    def log(self, message: str) -> None:
        print(message, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, cleanup: Callable[[], None] = lambda: None) -> float:
    """Seconds of one call of fn, the device synchronized before and after; then cleanup()
    (untimed: drops what the call left, e.g. gradients)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    cleanup()
    return seconds


def time_and_peak(fn: Callable[[], object], device: torch.device, reps: int,
                  cleanup: Callable[[], None] = lambda: None) -> dict:
    """One warm-up call (compilation, autotuning), then `reps` timed calls, each followed by
    cleanup(): their median and min (seconds), and on cuda the peak device memory above what was
    allocated before them (bytes, what the calls keep included; None on the CPU, where this
    process's peak cannot be reset)."""
    warmup_s = timed(fn, device, cleanup)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed(fn, device, cleanup) for _ in range(reps)]
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    return {"warmup_s": warmup_s, "median_s": statistics.median(times), "min_s": min(times), "reps": reps,
            "peak_extra_bytes": peak}


def peak_memory_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
