"""Ahead-of-time compile of every Triton kernel variant the launchers request, for real GPUs, on any machine.

Does: runs each launcher on meta tensors (no GPU, no memory; the lm-head ones told that their
GEMMs run on a GPU, so bf16/fp16 take the GPU path) for the workloads below, records every
kernel launch (argument dtypes and values, constexprs, num_warps), and compiles each one for
sm_80 and sm_90 through Triton's own launch path (`kernel.warmup` with a stand-in driver that
names the target, so pointer alignment and integer specialization are Triton's), reading
registers, spills and shared memory from ptxas. One process per architecture.
Does not: run a kernel, need a GPU or a CUDA torch, or work under TRITON_INTERPRET=1 (the
interpreter replaces @triton.jit at import): run it as `python -m rlvfast.kernels.aot`.

A kernel whose body carries the comment NO_SPILLS_MARK has been measured spill-free for every
variant here; `main` (and tests/kernels/test_aot_compile.py) fails if one spills.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import pkgutil
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from unittest import mock

import torch

ARCHS = (80, 90)
# Llama-2, 12 full 4096-blocks, Qwen2, Gemma 3; and GPT-2's 50257, not a multiple of 16: Triton
# specializes row strides and widths on divisibility by 16, so it is a variant of its own.
VOCABS = (32000, 49152, 151936, 262144, 50257)
LM_HEAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
NUM_TOKENS, HIDDEN = 16384, 1536  # one training micro-batch; only the chunking depends on them
VERIFIER_ROWS = (256, 16384)  # vocabulary chunks of 32768 columns, and of 4096
GROUP_SIZES = (1, 8, 1024, 65536)  # BLOCK 1, the usual group, one full block, 64 blocks streamed
NO_SPILLS_MARK = "# no register spills"
PTXAS_RE = {
    "registers": r"Used (\d+) registers",
    "stack_bytes": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
}
OPTIONAL_PTXAS_RE = {"static_smem": r"(\d+) bytes smem"}  # absent when the kernel has none


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch: pointer arguments by dtype, the rest by value."""
    module: str  # rlvfast.kernels.<module>
    kernel: str
    args: tuple  # torch.dtype for tensors, int/float otherwise
    options: tuple  # sorted (name, value) of the constexprs and num_warps

    def describe(self) -> str:
        dtypes = " ".join(_short(a) for a in self.args if isinstance(a, torch.dtype))
        opts = " ".join(f"{k}={_short(v)}" for k, v in self.options)
        return f"{dtypes} | {opts}"


@dataclass
class Compiled:
    """ptxas's account of one compiled variant."""
    arch: int
    kernel: str
    variant: str
    workloads: list[str]
    registers: int = -1
    stack_bytes: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    static_smem: int = -1
    launch_smem: int = -1  # dynamic shared memory Triton requests at launch
    seconds: float = 0.0
    error: str = ""
    no_spills_promised: bool = False


def _short(value) -> str:
    text = str(value)
    for long, short in (("torch.", ""), ("triton.language.", ""), ("float", "fp"), ("bfp16", "bf16"),
                        ("int64", "i64")):
        text = text.replace(long, short)
    return text


def kernels() -> dict[str, object]:
    """Every @triton.jit kernel (a `_..._kernel` JITFunction) of every rlvfast.kernels module, by module:name.

    A new kernel shows up here by itself; without a workload that launches it, it is never
    compiled, and tests/kernels/test_aot_compile.py fails on the missing kernel."""
    from triton.runtime.jit import JITFunction

    import rlvfast.kernels

    found = {}
    for module_name in sorted(m.name for m in pkgutil.iter_modules(rlvfast.kernels.__path__) if m.name != "aot"):
        module = importlib.import_module(f"rlvfast.kernels.{module_name}")
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction) and name.endswith("_kernel") and obj.fn.__module__ == module.__name__:
                found[f"{module_name}:{name}"] = obj
    return found


# ----------------------------------------------------------------------------- recording
def _recorder(key: str, sink: list[Launch]):
    """Stands in for JITFunction.run: records the launch instead of compiling and running it."""
    module, kernel = key.split(":")

    def run(*args, grid, warmup, **kwargs):
        recorded = tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args)
        sink.append(Launch(module, kernel, recorded, tuple(sorted(kwargs.items()))))
    return run


def _meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def _lm_head_workload(vocab: int, dtype: torch.dtype) -> None:
    """The token_logprobs and policy_loss launchers, forward and backward, at one (V, dtype)."""
    from rlvfast.kernels import policy_loss as pl, token_logprobs as tlp

    ops = tlp.LmHeadOperands.of(_meta(NUM_TOKENS, HIDDEN, dtype=dtype), _meta(vocab, HIDDEN, dtype=dtype), on_gpu=True)
    targets = _meta(NUM_TOKENS, dtype=torch.int64)
    logprobs, lse = tlp.logprobs_forward(ops, targets, 1.0, None)
    tlp.logprobs_backward(ops, targets, lse, logprobs, lse, 1.0, None, True, True)
    for has_grad in (True, False):  # training step; loss-only under no_grad
        pl.policy_loss_forward(ops, targets, logprobs, logprobs, logprobs, pl.PolicyLossConfig(), has_grad, has_grad)


def _verifier_workload(vocab: int, dtype: torch.dtype, num_rows: int) -> None:
    from rlvfast.kernels import token_logprobs as tlp, verifier_scores as vs

    ops = tlp.LmHeadOperands.of(_meta(num_rows, HIDDEN, dtype=dtype), _meta(vocab, HIDDEN, dtype=dtype), on_gpu=True)
    cfg = vs.VerifierConfig(yes_id=1, no_id=2)
    lse = vs.verifier_lse(ops, cfg.temperature, None)
    probs = _meta(num_rows, 2, dtype=lse.dtype)
    vs.verifier_backward(ops, [cfg.yes_id, cfg.no_id], lse, probs, probs, cfg, True, True)


def _group_workload(group_size: int, dtype: torch.dtype) -> None:
    from rlvfast.kernels.group_advantages import group_advantages

    group_advantages(_meta(64 * group_size, dtype=dtype), group_size, "grpo")


def workloads() -> list[tuple[str, callable]]:
    """(label, call) for every launcher at every (V, dtype, rows) or (group size, dtype) we ship for."""
    out = []
    for vocab in VOCABS:
        for dtype in LM_HEAD_DTYPES:
            out.append((f"lm-head V={vocab} {_short(dtype)}", lambda v=vocab, d=dtype: _lm_head_workload(v, d)))
            for rows in VERIFIER_ROWS:
                out.append((f"verifier B={rows} V={vocab} {_short(dtype)}",
                            lambda v=vocab, d=dtype, r=rows: _verifier_workload(v, d, r)))
    for group_size in GROUP_SIZES:
        for dtype in LM_HEAD_DTYPES if group_size == 8 else (torch.float32,):
            out.append((f"group={group_size} {_short(dtype)}", lambda g=group_size, d=dtype: _group_workload(g, d)))
    return out


def record_launches() -> dict[Launch, list[str]]:
    """Every distinct launch of every workload -> the workload labels that requested it."""
    launches: dict[Launch, list[str]] = {}
    with contextlib.ExitStack() as stack:
        sink: list[Launch] = []
        for key, kernel in kernels().items():
            stack.enter_context(mock.patch.object(kernel, "run", _recorder(key, sink)))
        for name, call in workloads():
            sink.clear()
            call()
            for launch in sink:
                labels = launches.setdefault(launch, [])
                if name not in labels:
                    labels.append(name)
    return launches


# ----------------------------------------------------------------------------- compiling
class _TargetDriver:
    """Stands in for the CUDA driver during warmup: names the target, owns no device."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)
        self.device = arch  # Triton caches compiled kernels per device: one per arch

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return self.device

    def get_current_stream(self, device: int) -> int:
        return 0


def _parse_ptxas(log: str, kernel: str) -> dict[str, int]:
    """The resource lines ptxas -v printed for this kernel's entry function."""
    section = log[log.find(f"Compiling entry function '{kernel}'"):]
    found = {}
    for name, pattern in PTXAS_RE.items():
        match = re.search(pattern, section)
        if match is None:
            raise RuntimeError(f"rlvfast.kernels.aot: no '{pattern}' in the ptxas log of {kernel}:\n{log}")
        found[name] = int(match.group(1))
    for name, pattern in OPTIONAL_PTXAS_RE.items():
        match = re.search(pattern, section)
        found[name] = int(match.group(1)) if match else 0
    return found


def compile_for(arch: int, launches: dict[Launch, list[str]]) -> list[Compiled]:
    """Compiles each launch for sm_<arch>; identical Triton specializations are compiled once."""
    import triton
    from triton.runtime.driver import driver

    all_kernels = kernels()
    triton.knobs.nvidia.dump_ptxas_log = True  # compile() prints ptxas -v; parsed below
    driver.set_active(_TargetDriver(arch))
    by_hash: dict[str, Compiled] = {}
    for launch, labels in launches.items():
        kernel = all_kernels[f"{launch.module}:{launch.kernel}"]
        row = Compiled(arch, launch.kernel, launch.describe(), list(labels),
                       no_spills_promised=NO_SPILLS_MARK in kernel.src)
        log = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(log):
                compiled = kernel.warmup(*launch.args, grid=(1,), **dict(launch.options))
        except Exception as e:  # reported per variant: one broken variant must not hide the others
            row.error = f"{type(e).__name__}: {e}"[:2000]
            by_hash[f"error-{len(by_hash)}"] = row
            continue
        key = compiled.metadata.hash
        if key in by_hash:  # the same specialization from another workload: cached, not recompiled
            by_hash[key].workloads.extend(w for w in labels if w not in by_hash[key].workloads)
            continue
        row.seconds = round(time.perf_counter() - start, 3)
        row.launch_smem = compiled.metadata.shared
        for name, value in _parse_ptxas(log.getvalue(), launch.kernel).items():
            setattr(row, name, value)
        by_hash[key] = row
    return list(by_hash.values())


def _compile_worker(arch: int) -> list[dict]:
    launches = record_launches()
    return [asdict(row) for row in compile_for(arch, launches)]


def compile_all(archs: tuple[int, ...] = ARCHS) -> list[Compiled]:
    """Every variant for every arch, one process per arch, each with a fresh Triton cache
    (a cached kernel is not passed through ptxas again, so its log would be missing)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("rlvfast.kernels.aot cannot compile under TRITON_INTERPRET=1 (the interpreter "
                           "replaces @triton.jit); run it in a process without it")
    with tempfile.TemporaryDirectory(prefix="rlvfast-aot-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the current default, said out loud
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(len(archs), os.cpu_count() or 1)) as pool:
            rows = pool.map(_compile_worker, archs)
    return [Compiled(**row) for arch_rows in rows for row in arch_rows]


# ----------------------------------------------------------------------------- report
def problems(rows: list[Compiled]) -> list[str]:
    """Compile errors, and spills in kernels whose comment says they have none."""
    out = [f"sm_{r.arch} {r.kernel} [{r.variant}]: {r.error}" for r in rows if r.error]
    out += [f"sm_{r.arch} {r.kernel} [{r.variant}]: {r.spill_stores} B spill stores, {r.spill_loads} B spill "
            f"loads, but its comment says '{NO_SPILLS_MARK}'"
            for r in rows if not r.error and r.no_spills_promised and (r.spill_stores or r.spill_loads)]
    return out


def table(rows: list[Compiled]) -> str:
    """A markdown table: one line per (arch, kernel, variant)."""
    lines = ["| arch | kernel | pointer dtypes \\| constexprs | regs | spill st/ld B | stack B "
             "| smem B (static/launch) | compile s | requested by |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.arch, r.kernel, r.variant)):
        asked = r.workloads[0] + (f" (+{len(r.workloads) - 1})" if len(r.workloads) > 1 else "")
        if r.error:
            lines.append(f"| sm_{r.arch} | {r.kernel} | {r.variant} | ERROR | | | | | {asked} |")
            continue
        lines.append(f"| sm_{r.arch} | {r.kernel} | {r.variant} | {r.registers} | {r.spill_stores}/{r.spill_loads} "
                     f"| {r.stack_bytes} | {r.static_smem}/{r.launch_smem} | {r.seconds:.2f} | {asked} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlvfast.kernels.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities, e.g. 80 90")
    parser.add_argument("--json", help="also write {kernels, rows, seconds} to this JSON file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = compile_all(tuple(args.arch))
    seconds = time.perf_counter() - start
    print(table(rows))
    print(f"\n{len(rows)} variants compiled in {seconds:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            report = {"kernels": sorted(kernels()), "rows": [asdict(r) for r in rows], "seconds": seconds}
            json.dump(report, f, indent=1)
    found = problems(rows)
    for line in found:
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
