"""Step `torchrun`: the trainer's many-process path on the device, at world size 1.

`python -m torch.distributed.run --standalone --nproc-per-node 1 -m rlvfast.train` on the
`train` step's random model and sizes (--dtype bf16, --no-compare, a checkpoint after every
step), two steps, then `--resume` to step 3 under torchrun again. One rank still takes the whole
distributed path (rlvfast/train/distributed.py): the process group (nccl on CUDA, gloo in the
dry run), FSDP2 sharding with bf16 mixed precision, the packed forward as FSDP2 unit calls, DCP
checkpoints (`dcp/`) and their load on resume. Records each launch's exit code, wall time and
(on failure) output tail, each step's metrics from OUT/metrics.jsonl, the checkpoints' `dcp/`,
the first two steps' loss and grad norm against the `train` step's (one process, the same
model, options and seed), and the peak device memory `nvidia-smi` reports while the launches
run (polled, the whole device: CUDA context and the caching allocator's reserve included; the
trainer reports none).
Not here: more than one rank (the device has one GPU; tests/train runs two on gloo).
"""
from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from pathlib import Path

from gpu_common import StepContext
from gpu_model import VERIFY_PROMPT, model_dir
from gpu_train import read_steps

FIRST_STEPS, RESUMED_STEPS = 2, 3
TAIL_LINES = 80
AGENT_FAILED = "failed (exitcode:"  # torchrun's agent, when a worker exits non-zero (its own traceback follows)
POLL_S = 0.5


def trainer_args(ctx: StepContext, out: Path) -> list[str]:
    s = ctx.sizes
    return ["--model", str(model_dir(s.model, ctx.work_dir, ctx.device)), "--out", str(out), "--dtype", "bf16",
            "--device", s.device, "--no-compare", "--eval-problems", "0", "--group-size", str(s.train_group),
            "--prompts-per-step", str(s.train_prompts), "--micro-batch", str(s.train_micro_batch),
            "--max-new-tokens", str(s.train_tokens), "--lr", "1e-6", "--warmup", "0", "--log-every", "1",
            f"--verify-prompt={VERIFY_PROMPT}", "--checkpoint-every", "1"]


class MemoryPoller:
    """The largest `nvidia-smi` memory.used (MiB, GPU 0) seen while running; None without nvidia-smi."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(POLL_S):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "--id=0"], capture_output=True, text=True, timeout=10).stdout
                used = int(out.strip())
            except (OSError, subprocess.SubprocessError, ValueError):
                return  # no nvidia-smi (the dry run) or an answer it cannot parse: no number
            self.peak_mib = max(used, self.peak_mib or 0)

    def __enter__(self) -> MemoryPoller:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def launch(ctx: StepContext, args: list[str]) -> dict:
    """One torchrun launch of the trainer, its output streamed to the log: exit code, seconds, and
    when it failed the last TAIL_LINES lines and the error line (`failure`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           "-m", "rlvfast.train", *args]
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    start = time.perf_counter()
    with subprocess.Popen(cmd, cwd=ctx.repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            tail.append(line.rstrip())
            ctx.log(line.rstrip())
    run = {"returncode": proc.returncode, "wall_s": time.perf_counter() - start}
    return run | (failure(list(tail)) if proc.returncode != 0 else {})


def failure(tail: list[str]) -> dict:
    """The output's tail and the worker's last line before the agent's report of its exit."""
    worker = tail[:next((i for i, line in enumerate(tail) if AGENT_FAILED in line), len(tail))]
    return {"tail": "\n".join(tail), "error": next((line for line in reversed(worker) if line.strip()), "")}


def checkpoints(out: Path) -> dict[str, bool]:
    """Each kept checkpoint folder -> whether it holds DCP shards (`dcp/`)."""
    from rlvfast.train.checkpoint import CHECKPOINTS, SHARDED

    return {p.name: (p / SHARDED).is_dir() for p in sorted((out / CHECKPOINTS).glob("step-*"))}


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def against_one_process(steps: list[dict], one: list[dict]) -> list[dict]:
    """Relative differences of loss and grad norm, step for step, against the `train` step's run
    (one process, the same model, options and seed)."""
    return [{"step": m["step"], "loss": relative(m["loss"], o["loss"]),
             "grad_norm": relative(m["grad_norm"], o["grad_norm"])} for m, o in zip(steps, one)]


def launch_or_raise(ctx: StepContext, name: str, args: list[str], memory: MemoryPoller) -> None:
    """`launch`, recorded as `name` with the memory peak so far; raises when it failed."""
    run = launch(ctx, args)
    ctx.record(**{name: run}, peak_memory_mib=memory.peak_mib)
    if run["returncode"] != 0:
        raise RuntimeError(f"the torchrun launch '{name}' exited {run['returncode']}")


def check_resumed(steps: list[dict], kept: dict[str, bool]) -> None:
    if [m["step"] for m in steps] != list(range(1, RESUMED_STEPS + 1)):
        raise RuntimeError(f"metrics.jsonl has steps {[m['step'] for m in steps]}, expected 1..{RESUMED_STEPS}")
    if not kept.get(f"step-{RESUMED_STEPS:06d}"):
        raise RuntimeError(f"checkpoint step-{RESUMED_STEPS:06d} has no dcp/: {kept}")


def torchrun_step(ctx: StepContext) -> None:
    out, one_process = ctx.work_dir / "torchrun_run", ctx.work_dir / "train_run"  # the `train` step's run
    args = trainer_args(ctx, out)
    ctx.record(model=ctx.sizes.model.name, dtype="bf16", nproc=1, group_size=ctx.sizes.train_group,
               prompts_per_step=ctx.sizes.train_prompts, max_new_tokens=ctx.sizes.train_tokens,
               first_in_process=[1, FIRST_STEPS + 1])
    with MemoryPoller() as memory:
        launch_or_raise(ctx, "first", args + ["--steps", str(FIRST_STEPS), "--overwrite"], memory)
        steps = read_steps(out)
        ctx.record(steps=steps, checkpoints_first=checkpoints(out))
        if (one_process / "metrics.jsonl").exists():
            ctx.record(vs_one_process=against_one_process(steps, read_steps(one_process)))
        launch_or_raise(ctx, "resume", args + ["--steps", str(RESUMED_STEPS), "--resume"], memory)
    steps, kept = read_steps(out), checkpoints(out)
    ctx.record(steps=steps, checkpoints=kept, peak_memory_mib=memory.peak_mib)
    check_resumed(steps, kept)
