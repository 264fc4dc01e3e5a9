"""bench/gpu/run.py, the prepared device check, rehearsed on the CPU.

The dry run runs every step (build plan, env, op parity, loss, sampler, two RL^V steps, pytest)
on CPU tensors at tiny shapes in its own processes, as the GPU run does at full size (~50 s on
two shared cores); its JSON must hold every section with numbers, and its markdown one table.
The report must survive a step that stopped early, and the budget must skip what does not fit.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU_DIR = REPO / "bench" / "gpu"
STEPS = ["build", "env", "ops", "loss", "sampler", "train", "op_tests"]


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(GPU_DIR / "run.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_dry")
    proc = run_script("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_dry_run_every_step_ok_in_order(dry_run):
    results, _ = dry_run
    assert results["meta"]["dry_run"] is True
    assert list(results["steps"]) == STEPS
    assert {name: step["status"] for name, step in results["steps"].items()} == dict.fromkeys(STEPS, "ok")
    assert all(is_number(step["seconds"]) and step["seconds"] > 0 for step in results["steps"].values())


def test_dry_run_sections_hold_numbers(dry_run):
    steps = {name: step["data"] for name, step in dry_run[0]["steps"].items()}
    assert steps["build"]["install"]["returncode"] == 0 and "--dry-run" in steps["build"]["install"]["cmd"]
    assert "triton" in steps["env"]["cuda_backends"]  # the interpreter stands in for the GPU
    ops = steps["ops"]
    assert ops["num_cases"] >= 18 and ops["num_failed"] == 0
    assert all(is_number(c["max_error"]) for c in ops["cases"])
    assert {c["dtype"] for c in ops["cases"]} == {"float32", "bfloat16", "float64"}
    for case in ("fused_triton", "plain_bf16", "plain_fp32"):
        timing = steps["loss"]["cases"][case]
        assert is_number(timing["ms"]) and timing["ms"] > 0 and is_number(timing["tflops"]), case
    sampler = steps["sampler"]
    assert sampler["ours"]["tokens"] == sampler["hf"]["tokens"] == 2 * 2 * 8  # 2 prompts x 2 samples x 8 tokens
    assert sampler["ours"]["scored"] == 4 and sampler["ours"]["verify_calls"] >= 1
    assert all(is_number(sampler[k]) for k in ("speedup", "build_and_load_s"))
    assert is_number(sampler["ours"]["verify_share"]) and sampler["ours"]["verify_share"] > 0
    train = steps["train"]
    assert len(train["steps"]) == 2 and train["dtype"] == "bf16" and train["group_size"] == 2
    for m in train["steps"]:
        assert all(is_number(m[k]) for k in ("time/sampling", "time/grading", "time/update", "num_train_tokens"))
        assert m["completions/mean_length"] == 8
    assert steps["op_tests"]["passed"] > 0 and "failed" not in steps["op_tests"]


def test_dry_run_markdown_is_one_table_with_every_step(dry_run):
    md = dry_run[1]
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert rows[0] == "| step | measure | value | expected (estimate) |"
    assert all(line.count("|") == 5 for line in rows)  # no stray '|' inside a cell
    for name in STEPS:
        assert f"| {name} | status | ok," in md
    assert re.search(r"\| loss \| fused_triton fwd\+bwd \(N=64, H=32, V=512\) \| [\d.]+ ms", md)


def import_gpu_module(name: str):
    sys.path.insert(0, str(GPU_DIR))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(GPU_DIR))


def test_report_keeps_what_a_timed_out_step_measured():
    report = import_gpu_module("gpu_report")
    results = {"meta": {"dry_run": False, "started": "now", "budget_s": 480, "commit": None}, "steps": {
        "loss": {"status": "timeout", "seconds": 120.0, "error": None, "data": {
            "n": 16384, "h": 1536, "v": 151936,
            "cases": {"fused_triton": {"ms": 47.0, "tflops": 489.0, "fraction_of_bf16_peak": 0.62,
                                       "peak_extra_bytes": 2 * 2**30},
                      "liger": {"error": "TypeError: forward() got 'a | b'\nsecond line"}}}},
        "sampler": {"status": "crashed (exit -9)", "seconds": 3.0, "error": None, "data": {"model": "m"}},
        "train": {"status": "error", "seconds": 5.0, "error": "Traceback ...\nRuntimeError: CUDA out of memory",
                  "data": {"steps": [{"time/sampling": 1.0}]}}}}
    md = report.markdown(results)
    assert "| loss | status | timeout, 120 s |  |" in md
    assert ("| loss | fused_triton fwd+bwd (N=16384, H=1536, V=151936) | 47.0 ms, 489 TFLOP/s (62% of 790), "
            "peak +2.00 GiB |") in md
    assert "| sampler | ours, None x None x None, scored | - tokens/s (-) |" in md
    assert "| train | error | RuntimeError: CUDA out of memory |  |" in md
    assert "| train | (incomplete) | KeyError: 'time/grading' |  |" in md
    assert "| loss | liger | error: TypeError: forward() got 'a / b' second line | 300-600 ms, +1-2.5 GiB |" in md
    assert all(line.count("|") == 5 for line in md.splitlines() if line.startswith("|"))


def test_pytest_counts_read_the_summary_line():
    build = import_gpu_module("gpu_build")
    assert build.pytest_counts("...\n3 failed, 120 passed, 2 skipped, 7 deselected in 40.1s\n") == {
        "failed": 3, "passed": 120, "skipped": 2, "deselected": 7}


def test_a_budget_too_small_skips_every_step(tmp_path):
    proc = run_script("--dry-run", "--out", str(tmp_path), "--budget-s", "5", timeout=60)
    assert proc.returncode == 1
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["status"] for s in results["steps"].values()] == ["skipped"] * len(STEPS)
    assert "budget" in results["steps"]["build"]["error"]


def test_unknown_step_is_a_usage_error(tmp_path):
    proc = run_script("--dry-run", "--out", str(tmp_path), "--steps", "loss,gpu", timeout=60)
    assert proc.returncode == 2
    expected = "--steps: unknown step(s) gpu; expected some of build, env, ops, loss, sampler, train, op_tests"
    assert expected in proc.stderr


def test_expected_ranges_are_the_ones_expected_md_derives():
    expected = import_gpu_module("gpu_expected").EXPECTED
    text = (GPU_DIR / "expected.md").read_text()
    missing = {k: v for k, v in expected.items() if v not in text}
    assert not missing, f"ranges in gpu_expected.py that bench/gpu/expected.md does not state: {missing}"
