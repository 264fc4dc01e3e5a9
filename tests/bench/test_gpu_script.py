"""bench/gpu/run.py, the prepared device check, rehearsed on the CPU.

The dry run runs every step (build plan, env, op parity, loss, sampler, two RL^V steps, the same
under torchrun and a resume, pytest) on CPU tensors at tiny shapes in its own processes, as the
GPU run does at full size (~80 s on two shared cores); its JSON must hold every section with
numbers, and its markdown one table.
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
STEPS = ["build", "env", "ops", "loss", "sampler", "train", "torchrun", "op_tests"]


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


def test_dry_run_torchrun_trains_checkpoints_and_resumes(dry_run):
    run = dry_run[0]["steps"]["torchrun"]["data"]
    assert run["first"]["returncode"] == run["resume"]["returncode"] == 0 and run["nproc"] == 1
    assert [m["step"] for m in run["steps"]] == [1, 2, 3]  # two steps, then the resumed third
    one = dry_run[0]["steps"]["train"]["data"]["steps"]
    for m in run["steps"]:
        assert all(is_number(m[k]) for k in ("time/update", "loss", "grad_norm")) and m["grad_norm"] > 0
        assert m["completions/mean_length"] == 8 and m["num_train_tokens"] == one[0]["num_train_tokens"]
    assert run["checkpoints_first"] == {"step-000001": True, "step-000002": True}  # keep-last 2, each with dcp/
    assert run["checkpoints"] == {"step-000002": True, "step-000003": True}
    assert run["peak_memory_mib"] is None  # no nvidia-smi reading on the CPU
    # world size 1 under torchrun (gloo, FSDP2, fp32 shards gathered as bf16) equals the train
    # step's one process (bf16 weights, fp32 master copies) on the CPU: the same loss and grad norm
    for m, o in zip(run["steps"][:2], one, strict=True):
        assert (m["loss"], m["grad_norm"]) == pytest.approx((o["loss"], o["grad_norm"]), rel=1e-6)
    assert [m["step"] for m in run["vs_one_process"]] == [1, 2]
    assert [m[k] for m in run["vs_one_process"] for k in ("loss", "grad_norm")] == pytest.approx([0] * 4, abs=1e-6)


def test_dry_run_markdown_is_one_table_with_every_step(dry_run):
    md = dry_run[1]
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert rows[0] == "| step | measure | value | expected (estimate) |"
    assert all(line.count("|") == 5 for line in rows)  # no stray '|' inside a cell
    for name in STEPS:
        assert f"| {name} | status | ok," in md
    assert re.search(r"\| loss \| fused_triton fwd\+bwd \(N=64, H=32, V=512\) \| [\d.]+ ms", md)
    assert "| torchrun | checkpoints kept: dcp/ in each | step-000002 True, step-000003 True | True |" in md
    assert re.search(r"\| torchrun \| step 3: sampling / grading / update; loss, grad norm \| [\d.]+ / ", md)


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


def test_report_shows_a_failed_torchrun_launch():
    report = import_gpu_module("gpu_report")
    error = "torch.distributed.DistBackendError: NCCL a|b"
    results = {"meta": {"dry_run": False, "started": "now", "budget_s": 480, "commit": None}, "steps": {
        "torchrun": {"status": "error", "seconds": 30.0, "error": "RuntimeError: the torchrun launch 'first' exited 1",
                     "data": {"nproc": 1, "first_in_process": [1, 3], "peak_memory_mib": 3072,
                              "first": {"returncode": 1, "wall_s": 21.5, "tail": "...", "error": error}}}}}
    md = report.markdown(results)
    assert "| torchrun | torchrun x1, --steps 2, a checkpoint every step | exit 1, 21.5 s | 30-75 s |" in md
    assert "| torchrun | torchrun x1, --steps 2, a checkpoint every step: the worker's last line | torch.distributed." \
           "DistBackendError: NCCL a/b |  |" in md
    assert "| torchrun | peak device memory used (nvidia-smi, polled) | 3.0 GiB | 15-35 GiB |" in md
    assert "resume" not in md and "(incomplete)" not in md


def test_a_failed_launch_names_the_worker_error_not_torchruns_report():
    torchrun = import_gpu_module("gpu_torchrun")
    tail = ["step 1/2 ...", "rlvfast.train: error: --steps must be an int >= 1, got 0", "",
            "E1202 02:13:00 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2) local_rank: 0",
            "Traceback (most recent call last):", "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
            "=" * 60]
    assert torchrun.failure(tail) == {"tail": "\n".join(tail),
                                      "error": "rlvfast.train: error: --steps must be an int >= 1, got 0"}
    assert torchrun.failure(["Killed"])["error"] == "Killed"  # no agent report: the last line


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
    expected = ("--steps: unknown step(s) gpu; expected some of build, env, ops, loss, sampler, train, torchrun, "
                "op_tests")
    assert expected in proc.stderr


def test_expected_ranges_are_the_ones_expected_md_derives():
    expected = import_gpu_module("gpu_expected").EXPECTED
    text = (GPU_DIR / "expected.md").read_text()
    missing = {k: v for k, v in expected.items() if v not in text}
    assert not missing, f"ranges in gpu_expected.py that bench/gpu/expected.md does not state: {missing}"
