"""Data-parallel RL^V (torchrun + FSDP2) on the CPU: the step time at world sizes 1 and 2 on the
same global batch, and the parameter + optimizer memory per rank with and without sharding.

    python bench/bench_distributed.py [--steps 6] [--out /tmp/bench_distributed] [--skip-time]

Step time: `python -m rlvfast.train` on the tiny model (--prompts-per-step 8 --group-size 8,
no table) in one process (the packed forward), then under `torchrun --nproc-per-node 1` and
`2` (FSDP2, HF's forward in the update); the median over the steps after the first of rank
0's time/sampling + time/grading + time/update from metrics.jsonl. Memory: a random Llama
(`MEMORY_CONFIG`, ~184M parameters, fp32) with fused AdamW, its state initialized; the bytes of
the tensors each rank holds (its shards under FSDP2), counted, not sampled from the allocator.
Prints one JSON line per measurement; nothing asserts speed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a few-hundred-M random Llama: 12 layers, hidden 1024, MLP 2816, 32k vocabulary, tied embeddings
MEMORY_CONFIG = dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=16,
                     intermediate_size=2816, vocab_size=32000, tie_word_embeddings=True)
TRAIN_FLAGS = ["--no-compare", "--eval-problems", "0", "--prompts-per-step", "8", "--group-size", "8",
               "--checkpoint-every", "1000", "--overwrite"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _launch(nproc: int | None, module_args: list[str]) -> list[str]:
    """`python -m ...` (nproc None) or the same under `torchrun --standalone --nproc-per-node nproc`."""
    if nproc is None:
        return [sys.executable, "-m", *module_args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", *module_args]


def step_times(out: Path, nproc: int | None, steps: int) -> dict:
    """Trains `steps` steps; the median step time (seconds) over the steps after the first."""
    run = out / (f"torchrun{nproc}" if nproc else "one_process")
    args = ["rlvfast.train", *TRAIN_FLAGS, "--steps", str(steps), "--out", str(run)]
    t0 = time.perf_counter()
    subprocess.run(_launch(nproc, args), env=_env(), check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    parts = {k: statistics.median(m[f"time/{k}"] for m in lines) for k in ("sampling", "grading", "update")}
    return {"bench": "step_time", "launch": f"torchrun x{nproc}" if nproc else "one process",
            "median_step_s": sum(parts.values()), **{f"{k}_s": v for k, v in parts.items()},
            "reward_last": lines[-1]["reward"], "wall_s": wall}


def memory(nproc: int | None) -> dict:
    """Runs `memory_worker` in one process (no sharding) or under torchrun (FSDP2); its report."""
    result = subprocess.run(_launch(nproc, ["bench.bench_distributed", "--memory-worker"]), cwd=ROOT, env=_env(),
                            check=True, capture_output=True, text=True)
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def _local_bytes(tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def memory_worker() -> None:
    """Rank 0 prints the bytes of parameters and AdamW state this rank holds (sharded under torchrun)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlvfast.train import distributed

    torch.manual_seed(0)
    world = distributed.init(torch.device("cpu"), 600)
    model = LlamaForCausalLM(LlamaConfig(**MEMORY_CONFIG))
    num_params = sum(p.numel() for p in model.parameters())
    if world.is_distributed:
        distributed.shard(model, torch.device("cpu"), "fp32")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates exp_avg and exp_avg_sq
    param_bytes = sum(_local_bytes(p) for p in model.parameters())
    state_bytes = sum(_local_bytes(t) for s in optimizer.state.values() for t in s.values() if t.dim() > 0)
    if world.is_main:
        print(json.dumps({"bench": "memory_per_rank", "world_size": world.size, "sharded": world.is_distributed,
                          "num_params": num_params, "param_mib": param_bytes / 2**20,
                          "optimizer_mib": state_bytes / 2**20, "total_mib": (param_bytes + state_bytes) / 2**20}))
    distributed.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="/tmp/bench_distributed")
    parser.add_argument("--skip-time", action="store_true", help="only the memory measurement")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker()
    for nproc in (None, 2):
        print(json.dumps(memory(nproc)), flush=True)
    if not args.skip_time:
        for nproc in (None, 1, 2):
            print(json.dumps(step_times(Path(args.out), nproc, args.steps)), flush=True)


if __name__ == "__main__":
    main()
