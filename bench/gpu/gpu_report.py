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
    result = f"exit {install.get('returncode')}, {fmt(install.get('seconds'), '.0f', ' s')}"
    rows = [(f"pip install -e . (nvcc: {d.get('nvcc')})", result, EXPECTED["build.seconds"]),
            ("wheels installed", f"{len(wheels.get('wheels', []))} (exit {wheels.get('returncode')})", "4")]
    if "install_without_cuda" in d:
        rows.append(("retry without nvcc", f"exit {d['install_without_cuda']['returncode']}", ""))
    return rows


def env_rows(d: dict) -> list[tuple[str, str, str]]:
    versions = ", ".join(f"{k} {v}" for k, v in d.get("versions", {}).items())
    device = f"{d.get('device_name')} (sm {d.get('capability', '-')}, {fmt(d.get('memory_gib'), '.0f', ' GiB')})"
    return [("device", device, "NVIDIA H200, sm 9.0"), ("versions", f"python {d.get('python')}, {versions}", ""),
            ("backends for the device's tensors", ", ".join(d.get("cuda_backends", [])), "reference, triton, cuda"),
            ("CUDA op (group_advantages_cuda) loaded", str(d.get("has_cuda_op")), "True")]


def ops_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for dtype in ("float32", "bfloat16", "float64"):
        cases = [c for c in d.get("cases", []) if c["dtype"] == dtype]
        if not cases:
            continue
        worst = max((c["max_error"] for c in cases if c["max_error"] is not None), default=None)
        rows.append((f"{dtype}: worst error vs fp64 ({len(cases)} cases)",
                     f"{fmt(worst, '.1e')}, {sum(not c['ok'] for c in cases)} outside tolerance",
                     f"<= {cases[0]['tolerance']:.0e}"))
    return rows


def loss_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for name, c in d.get("cases", {}).items():
        expected = EXPECTED.get(f"loss.{name}", "")
        if "error" in c:
            rows.append((name, f"error: {c['error'][:120]}", expected))
            continue
        peak = None if c.get("peak_extra_bytes") is None else c["peak_extra_bytes"] / GIB
        value = (f"{fmt(c['ms'], '.1f', ' ms')}, {fmt(c['tflops'], '.0f')} TFLOP/s "
                 f"({fmt(100 * c['fraction_of_bf16_peak'], '.0f')}% of 790), peak +{fmt(peak, '.2f', ' GiB')}")
        rows.append((f"{name} fwd+bwd (N={d['n']}, H={d['h']}, V={d['v']})", value, expected))
    return rows


def rate(run: dict) -> str:
    return f"{fmt(run.get('tokens_per_s'), '.0f')} tokens/s ({fmt(run.get('seconds'), '.2f', ' s')})"


def sampler_rows(d: dict) -> list[tuple[str, str, str]]:
    ours, hf = d.get("ours", {}), d.get("hf", {})
    share = None if "verify_share" not in ours else 100 * ours["verify_share"]
    return [(f"ours, {d.get('prompts')} x {d.get('samples')} x {d.get('new_tokens')}, scored", rate(ours),
             EXPECTED["sampler.ours"]),
            ("HF generate, same batch", rate(hf), EXPECTED["sampler.hf"]),
            ("speedup over HF", fmt(d.get("speedup"), ".2f", "x"), EXPECTED["sampler.speedup"]),
            ("in-cache verification share", f"{fmt(share, '.2f', '%')} ({ours.get('verify_calls', '-')} forwards)",
             EXPECTED["sampler.verify_share"])]


def train_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = []
    for i, m in enumerate(d.get("steps", []), 1):
        split = " / ".join(fmt(m[k], ".3f") for k in ("time/sampling", "time/grading", "time/update"))
        rows.append((f"RL^V step {i}: sampling / grading / update", f"{split} s = {fmt(m['step_s'], '.2f', ' s')}",
                     EXPECTED[f"train.step{min(i, 2)}"]))
    if "wall_s" in d:
        rows.append(("train() wall, of it outside the steps",
                     f"{fmt(d['wall_s'], '.1f')} s, {fmt(d['outside_steps_s'], '.1f')} s", EXPECTED["train.outside"]))
    return rows


def launch_row(what: str, run: dict | None, expected: str) -> list[tuple[str, str, str]]:
    """A torchrun launch's exit code and wall time, and the worker's error line when it failed."""
    if run is None:
        return []
    rows = [(what, f"exit {run['returncode']}, {fmt(run['wall_s'], '.1f', ' s')}", expected)]
    if "error" in run:
        rows.append((f"{what}: the worker's last line", run["error"][:200], ""))
    return rows


def torchrun_rows(d: dict) -> list[tuple[str, str, str]]:
    rows = launch_row(f"torchrun x{d.get('nproc')}, --steps 2, a checkpoint every step", d.get("first"),
                      EXPECTED["torchrun.first"])
    rows += launch_row("the same with --resume, to step 3", d.get("resume"), EXPECTED["torchrun.resume"])
    for m in d.get("steps", []):
        split = " / ".join(fmt(m[k], ".3f") for k in ("time/sampling", "time/grading", "time/update"))
        expected = EXPECTED["torchrun.first_step" if m["step"] in d["first_in_process"] else "torchrun.step"]
        rows.append((f"step {m['step']}: sampling / grading / update; loss, grad norm",
                     f"{split} s = {fmt(m['step_s'], '.2f', ' s')}; {fmt(m['loss'], '.4g')}, "
                     f"{fmt(m['grad_norm'], '.4g')}", expected))
    for m in d.get("vs_one_process", []):
        rows.append((f"step {m['step']} vs `train`'s (one process): loss, grad norm",
                     f"{fmt(m['loss'], '.1e')}, {fmt(m['grad_norm'], '.1e')} relative", EXPECTED["torchrun.vs_one"]))
    kept = d.get("checkpoints", d.get("checkpoints_first"))
    if kept is not None:
        rows.append(("checkpoints kept: dcp/ in each", ", ".join(f"{k} {v}" for k, v in kept.items()), "True"))
    if "peak_memory_mib" in d:
        peak = None if d["peak_memory_mib"] is None else d["peak_memory_mib"] / 1024
        rows.append(("peak device memory used (nvidia-smi, polled)", fmt(peak, ".1f", " GiB"),
                     EXPECTED["torchrun.memory"]))
    return rows


def op_tests_rows(d: dict) -> list[tuple[str, str, str]]:
    counts = ", ".join(f"{v} {k}" for k, v in d.items() if isinstance(v, int))
    return [("pytest " + " ".join(d.get("args", [])), counts or "-", "all pass")]


ROWS = {"build": build_rows, "env": env_rows, "ops": ops_rows, "loss": loss_rows, "sampler": sampler_rows,
        "train": train_rows, "torchrun": torchrun_rows, "op_tests": op_tests_rows}


def markdown(results: dict) -> str:
    meta = results["meta"]
    title = "DRY RUN, CPU, tiny shapes" if meta["dry_run"] else "GPU"
    lines = [f"# rlvfast device check ({title})", "",
             f"started {meta['started']}, wall {fmt(meta.get('wall_s'), '.0f', ' s')} of a {meta['budget_s']} s "
             f"budget; commit {meta.get('commit')}", "",
             "| step | measure | value | expected (estimate) |", "| --- | --- | --- | --- |"]
    for name, step in results["steps"].items():
        rows = [("status", f"{step['status']}, {fmt(step.get('seconds'), '.0f', ' s')}", "")]
        if step.get("error"):
            rows.append(("error", last_line(step["error"]), ""))
        try:
            rows += ROWS[name](step.get("data", {}))
        except (KeyError, TypeError) as e:  # a step that stopped early lacks fields: say so, keep the table
            rows.append(("(incomplete)", f"{type(e).__name__}: {e}", ""))
        lines += ["| " + " | ".join(cell(x) for x in (name, *row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def last_line(error: str) -> str:
    return ([line for line in error.strip().splitlines() if line.strip()][-1:] or [""])[0][:200]


def cell(text: str) -> str:
    """Text safe inside a markdown table cell (no '|', one line)."""
    return " ".join(str(text).replace("|", "/").split())
