"""The device check's outputs: strict JSON, and one markdown table (step, measure, value, expected).

Reads the results dict `run.py` builds ({"meta": ..., "steps": {name: {"status", "seconds",
"data", "error"}}}); the expected column comes from `gpu_expected.EXPECTED` (estimates from FLOPs
and bytes, derived in bench/gpu/expected.md). Imports no torch: the parent process stays light.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from gpu_expected import EXPECTED

GIB = 2**30


def finite(obj):
    """obj with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """Strict JSON (NaN and inf become null), written to a temporary file and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(finite(obj), indent=1, allow_nan=False))
    os.replace(tmp, path)


def fmt(value, spec: str = ".3g", unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{unit}"


def build_rows(d: dict) -> list[tuple[str, str, str]]:
    install, wheels = d.get("install", {}), d.get("wheels", {})
    rows = [("pip install -e . (nvcc: %s)" % d.get("nvcc"),
             f"exit {install.get('returncode')}, {fmt(install.get('seconds'), '.0f', ' s')}", EXPECTED["build.seconds"]),
            ("wheels installed", f"{len(wheels.get('wheels', []))} (exit {wheels.get('returncode')})", "4")]
    if "install_without_cuda" in d:
        rows.append(("retry without nvcc", f"exit {d['install_without_cuda']['returncode']}", ""))
    return rows


def env_rows(d: dict) -> list[tuple[str, str, str]]:
    versions = d.get("versions", {})
    return [("device", f"{d.get('device_name')} (sm {d.get('capability', '-')}, {fmt(d.get('memory_gib'), '.0f', ' GiB')})",
             "NVIDIA H200, sm 9.0"),
            ("versions", f"python {d.get('python')}, " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""),
            ("backends for the device's tensors", ", ".join(d.get("cuda_backends", [])), "reference, triton, cuda"),
            ("CUDA op (group_advantages_cuda) loaded", str(d.get("has_cuda_op")), "True")]


def ops_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for dtype in ("float32", "bfloat16", "float64"):
        cases = [c for c in d.get("cases", []) if c["dtype"] == dtype]
        errors = [c["max_error"] for c in cases if c["max_error"] is not None]
        if cases:
            rows.append((f"{dtype}: worst error vs fp64 ({len(cases)} cases)",
                         f"{fmt(max(errors, default=None), '.1e')}, {sum(not c['ok'] for c in cases)} outside tolerance",
                         f"<= {cases[0]['tolerance']:.0e}"))
    return rows


def loss_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for name, c in d.get("cases", {}).items():
        if "error" in c:
            rows.append((name, f"error: {c['error'][:120]}", EXPECTED.get(f"loss.{name}", "")))
            continue
        peak = None if c.get("peak_extra_bytes") is None else c["peak_extra_bytes"] / GIB
        rows.append((f"{name} fwd+bwd (N={d['n']}, H={d['h']}, V={d['v']})",
                     f"{fmt(c['ms'], '.1f', ' ms')}, {fmt(c['tflops'], '.0f')} TFLOP/s "
                     f"({fmt(100 * c['fraction_of_bf16_peak'], '.0f')}% of 790), peak +{fmt(peak, '.2f', ' GiB')}",
                     EXPECTED.get(f"loss.{name}", "")))
    return rows


def sampler_rows(d: dict) -> list[tuple[str, str, str]]:
    ours, hf = d.get("ours", {}), d.get("hf", {})
    shape = f"{d.get('prompts')} x {d.get('samples')} x {d.get('new_tokens')}"
    return [(f"ours, {shape}, scored", f"{fmt(ours.get('tokens_per_s'), '.0f')} tokens/s "
             f"({fmt(ours.get('seconds'), '.2f', ' s')})", EXPECTED["sampler.ours"]),
            ("HF generate, same batch", f"{fmt(hf.get('tokens_per_s'), '.0f')} tokens/s ({fmt(hf.get('seconds'), '.2f', ' s')})",
             EXPECTED["sampler.hf"]),
            ("speedup over HF", fmt(d.get("speedup"), ".2f", "x"), EXPECTED["sampler.speedup"]),
            ("in-cache verification share", f"{fmt(100 * ours['verify_share'], '.2f', '%') if 'verify_share' in ours else '-'} "
             f"({ours.get('verify_calls', '-')} forwards)", EXPECTED["sampler.verify_share"])]


def train_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for i, m in enumerate(d.get("steps", []), 1):
        rows.append((f"RL^V step {i}: sampling / grading / update",
                     f"{fmt(m['time/sampling'], '.2f')} / {fmt(m['time/grading'], '.3f')} / {fmt(m['time/update'], '.2f')} s "
                     f"= {fmt(m['step_s'], '.2f', ' s')}", EXPECTED[f"train.step{min(i, 2)}"]))
    if "wall_s" in d:
        rows.append(("train() wall, of it outside the steps", f"{fmt(d['wall_s'], '.1f')} s, {fmt(d['outside_steps_s'], '.1f')} s",
                     EXPECTED["train.outside"]))
    return rows


def op_tests_rows(d: dict) -> list[tuple[str, str, str]]:
    counts = ", ".join(f"{v} {k}" for k, v in d.items() if isinstance(v, int))
    return [("pytest " + " ".join(d.get("args", [])), counts or "-", "all pass")]


ROWS = {"build": build_rows, "env": env_rows, "ops": ops_rows, "loss": loss_rows, "sampler": sampler_rows,
        "train": train_rows, "op_tests": op_tests_rows}


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"# rlvfast device check ({'DRY RUN, CPU, tiny shapes' if meta['dry_run'] else 'GPU'})", "",
             f"started {meta['started']}, wall {fmt(meta.get('wall_s'), '.0f', ' s')} of a {meta['budget_s']} s budget; "
             f"commit {meta.get('commit')}", "", "| step | measure | value | expected (estimate) |", "| --- | --- | --- | --- |"]
    for name, step in results["steps"].items():
        status = f"{step['status']}, {fmt(step.get('seconds'), '.0f', ' s')}"
        lines.append(f"| {name} | status | {status} | |")
        if step.get("error"):
            lines.append(f"| {name} | error | {one_line(step['error'])} | |")
        try:
            rows = ROWS[name](step.get("data", {}))
        except (KeyError, TypeError) as e:  # a step that stopped early lacks fields: say so, keep the table
            rows = [("(incomplete)", f"{type(e).__name__}: {e}", "")]
        lines += [f"| {name} | {m} | {v} | {x} |" for m, v, x in rows]
    return "\n".join(lines) + "\n"


def one_line(error: str) -> str:
    last = [line for line in error.strip().splitlines() if line.strip()][-1:] or [""]
    return last[0].replace("|", "/")[:200]
