"""The prepared device check (issue 16): one script, one H200, a fixed time budget.

Steps, in order (bench/gpu/gpu_*.py; README.md beside this file says how to run it):
  build     install the carried wheels, then `pip install --no-deps --no-build-isolation -e .` (the CUDA op)
  env       versions, the device, the backends rlvfast.ops has for its tensors
  ops       every op backend on the device against the fp64 reference, fp32 and bf16
  loss      fused policy loss fwd+bwd, bf16, N=16384 H=1536 V=151936: fused Triton, plain bf16 / fp32, Liger
  sampler   Sampler vs HF generate, random Qwen2.5-0.5B-shaped model, 32 prompts x 8 samples x 512 tokens
  train     two RL^V steps of that model (bf16, group 8) through rlvfast.train.loop.train: the split
  torchrun  the same run under `torchrun --nproc-per-node 1` (nccl, FSDP2 bf16, DCP): 2 steps, then --resume to 3
  op_tests  pytest tests/ops
Each step runs in its own process under its own time-out, clipped to what is left of the global
budget, so a failure, a hang or a broken CUDA context loses that step only; a step writes its
results as it measures, so one killed at its time-out keeps what it had. After every step,
$OUT/gpu_check.json and $OUT/gpu_check.md (one table) are rewritten; $OUT/gpu_check.log holds
all output. Exit 0 when every step passed, 1 otherwise.

--dry-run: every step on CPU tensors at tiny shapes (a tiny model, N=64, V=512, 2 prompts x 2
samples x 8 tokens; pip plans but installs nothing), into a temporary folder unless --out.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from gpu_report import markdown, write_json
from gpu_sizes import DRY, FULL

REPO = Path(__file__).resolve().parents[2]
# name -> (module, function, time-out in seconds on the GPU); the order is the run's
STEPS = {"build": ("gpu_build", "build_step", 240), "env": ("gpu_build", "env_step", 60),
         "ops": ("gpu_ops", "ops_step", 120), "loss": ("gpu_loss", "loss_step", 120),
         "sampler": ("gpu_sampler", "sampler_step", 120), "train": ("gpu_train", "train_step", 150),
         "torchrun": ("gpu_torchrun", "torchrun_step", 150), "op_tests": ("gpu_build", "op_tests_step", 180)}
RESERVE_S = 10  # kept back from the budget for the last report
MIN_STEP_S = 20  # a step is skipped when less than this is left


class Log:
    """Lines to stdout and to $OUT/gpu_check.log, each with the seconds since the start."""

    def __init__(self, path: Path) -> None:
        self.start, self.file, self.lock = time.perf_counter(), open(path, "a"), threading.Lock()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.start:6.1f} s] {message}"
        with self.lock:
            print(line, flush=True)
            self.file.write(line + "\n")
            self.file.flush()


def child_env(dry_run: bool) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env["TRITON_INTERPRET"] = "1" if dry_run else "0"  # the dry run's Triton kernels run interpreted
    if dry_run:  # CPU tensors even on a machine with a GPU; one thread (tiny shapes, often a shared CPU)
        env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return env


def run_child(name: str, timeout: float, work: Path, dry_run: bool, log: Log) -> dict:
    """One step in its own process group; its status, seconds, data and error."""
    cmd = [sys.executable, __file__, "--child", name, "--work", str(work)] + (["--dry-run"] if dry_run else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(dry_run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    reader = threading.Thread(target=lambda: [log(f"  {name} | {line.rstrip()}") for line in proc.stdout], daemon=True)
    reader.start()
    try:
        returncode, timed_out = proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the step and what it started (pip, pytest, workers)
        returncode, timed_out = proc.wait(), True
    reader.join(timeout=5)
    result = read_result(work / f"{name}.json")
    if result["status"] == "running" or (returncode != 0 and result["status"] == "ok"):
        result["status"] = "timeout" if timed_out else f"crashed (exit {returncode})"
    return result | {"seconds": time.perf_counter() - start, "timeout_s": timeout}


def read_result(path: Path) -> dict:
    if not path.exists():
        return {"status": "running", "data": {}}  # it died before its first record
    return json.loads(path.read_text())


def child_main(name: str, work: Path, dry_run: bool) -> int:
    """Runs one step in this process; writes {status, error, data} to work/NAME.json."""
    from gpu_common import StepContext

    ctx = StepContext(DRY if dry_run else FULL, REPO, work, work / f"{name}.json", dry_run)
    module, function, _ = STEPS[name]
    try:
        getattr(importlib.import_module(module), function)(ctx)
        status, error = "ok", None
    except Exception:  # noqa: BLE001  (the step's failure is its result; the parent goes on)
        status, error = "error", traceback.format_exc()[-6000:]
        print(error, flush=True)
    write_json(ctx.result_path, {"status": status, "error": error, "data": ctx.data})
    return 0 if status == "ok" else 1


def output_dir(args: argparse.Namespace) -> Path:
    if args.out:
        out = Path(args.out)
    elif os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
    elif args.dry_run:
        out = Path(tempfile.mkdtemp(prefix="rlvfast_gpu_dry_"))
    else:
        raise SystemExit("run.py: error: no --out and no $OUT (the device tool sets $OUT)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_all(args: argparse.Namespace) -> int:
    out, work = output_dir(args), Path(tempfile.mkdtemp(prefix="rlvfast_gpu_work_"))
    log, start = Log(out / "gpu_check.log"), time.perf_counter()
    sizes = DRY if args.dry_run else FULL
    results = {"meta": {"dry_run": args.dry_run, "budget_s": args.budget_s, "commit": commit(),
                        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "sizes": sizes.to_dict(), "work_dir": str(work)}, "steps": {}}
    log(f"device check {'(dry run) ' if args.dry_run else ''}-> {out}; work folder {work}")
    for name in args.steps:
        left = args.budget_s - (time.perf_counter() - start) - RESERVE_S
        if left < MIN_STEP_S:
            results["steps"][name] = {"status": "skipped", "error": f"budget: {left:.0f} s left", "data": {}}
            continue
        timeout = min(STEPS[name][2], left)
        log(f"step {name}: start (time-out {timeout:.0f} s)")
        step = results["steps"][name] = run_child(name, timeout, work, args.dry_run, log)
        log(f"step {name}: {step['status']} in {step['seconds']:.1f} s")
        write_outputs(out, results, time.perf_counter() - start)
    write_outputs(out, results, time.perf_counter() - start)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)  # the random model and the training run
    failed = [n for n, s in results["steps"].items() if s["status"] != "ok"]
    print("\n" + markdown(results), flush=True)  # the table also in the output's tail
    log(f"done in {time.perf_counter() - start:.0f} s; " + (f"not ok: {', '.join(failed)}" if failed else "all ok")
        + f"; {out / 'gpu_check.md'}")
    return 1 if failed else 0


def write_outputs(out: Path, results: dict, wall_s: float) -> None:
    results["meta"]["wall_s"] = wall_s
    write_json(out / "gpu_check.json", results)
    (out / "gpu_check.md").write_text(markdown(results))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/gpu/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU tensors at tiny shapes")
    parser.add_argument("--out", help="where gpu_check.{json,md,log} go (default: $OUT; a temp folder for --dry-run)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="global time budget in seconds (default 480)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (the model, the run)")
    parser.add_argument("--child", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown step(s) {', '.join(unknown)}; expected some of {', '.join(STEPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, Path(args.work), args.dry_run)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
