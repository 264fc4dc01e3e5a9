"""Data-parallel RL^V (torchrun + FSDP2) on the CPU: the step time at world sizes 1 and 2 on the
same global batch, the update time at world size 2 with HF's forward or the packed one, and
the parameter + optimizer memory per rank with and without sharding.

    python bench/bench_distributed.py [--steps 6] [--out /tmp/bench_distributed] [--skip-time] [--skip-update]

Step time: `python -m rlvfast.train` on the tiny model (--prompts-per-step 8 --group-size 8,
no table) in one process, then under `torchrun --nproc-per-node 1` and `2` (FSDP2; the packed
forward in the update); the median over the steps after the first of rank 0's time/sampling +
time/grading + time/update from metrics.jsonl. Update time (`UPDATE_SHAPES`): `loop.update` on
synthetic rollouts (group size 8, each group one prompt) under `torchrun --nproc-per-node 2`,
design (a) (`Run.fast_forward=False`: the root module's forward, every prompt G times) and
design (b) (the packed forward as calls of the FSDP2 units), the median of `--repeats` updates
after a warm-up one, on the shipped tiny model and on a random Llama of `MEMORY_CONFIG`.
Memory: a random Llama (`MEMORY_CONFIG`, ~184M parameters, fp32) with fused AdamW, its state
initialized; the bytes of the tensors each rank holds (its shards under FSDP2), counted, not
sampled from the allocator. Prints one JSON line per measurement; nothing asserts speed.
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
# update-time shapes: prompts per rank (x group size 8), prompt tokens, completion tokens (uniform in [n/2, n])
UPDATE_SHAPES = {"tiny": dict(prompts=4, prompt_len=40, completion_len=48),  # the default step's per-rank share
                 "memory_config": dict(prompts=1, prompt_len=64, completion_len=32)}
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
        distributed.shard(model, "fp32")
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


def update_times(model_name: str, repeats: int) -> list[dict]:
    """Runs `update_worker` under torchrun at world size 2; its reports, design (a) then (b)."""
    result = subprocess.run(_launch(2, ["bench.bench_distributed", "--update-worker", model_name,
                                        "--repeats", str(repeats)]), cwd=ROOT, env=_env(), check=True,
                            capture_output=True, text=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _update_model(model_name: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlvfast.models import load_model

    torch.manual_seed(0)  # every rank builds the same random model before sharding
    if model_name == "tiny":
        return load_model(ROOT / "rlvfast" / "models" / "base", device=torch.device("cpu"))[0]
    return LlamaForCausalLM(LlamaConfig(**MEMORY_CONFIG))


def _synthetic_rollouts(shape: dict, vocab: int, seed: int) -> list:
    """shape["prompts"] groups of 8 samples, each group sharing one random prompt."""
    import torch

    from rlvfast.train.loss import Sample

    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(shape["prompts"]):
        prompt = torch.randint(3, vocab, (shape["prompt_len"],), generator=g).tolist()
        for i in range(8):
            n = int(torch.randint(shape["completion_len"] // 2, shape["completion_len"] + 1, (1,), generator=g))
            completion = torch.randint(3, vocab, (n,), generator=g).tolist()
            samples.append(Sample(prompt, completion, -torch.rand(n, generator=g), advantage=float(i % 3 - 1),
                                  token_weight=1e-3, label_id=3 + i % 2, label_weight=1e-2))
    return samples


def update_worker(model_name: str, repeats: int) -> None:
    """Rank 0 prints the median `loop.update` time of design (a) and (b) on synthetic rollouts."""
    from types import SimpleNamespace

    import torch

    from rlvfast.train import distributed, loop
    from rlvfast.train.config import TrainConfig

    world = distributed.init(torch.device("cpu"), 600)
    shape = UPDATE_SHAPES[model_name]
    config = TrainConfig(out="unused", group_size=8, prompts_per_step=shape["prompts"] * world.size, eval_problems=0)
    sampler = SimpleNamespace(verify_ids=[5, 6, 7, 8], eos_ids=[1], yes_id=3, no_id=4)
    runs, seconds = {}, {"a": [], "b": []}
    for design in seconds:
        model = _update_model(model_name)
        distributed.shard(model, "fp32")
        distributed.register_unit_calls(model)
        runs[design] = loop.Run(config, model, SimpleNamespace(pad_token_id=0), sampler,
                                torch.optim.AdamW(model.parameters(), lr=1e-6), None, None, config.loss_config(),
                                None, torch.device("cpu"), fast_forward=design == "b", world=world)
    samples = _synthetic_rollouts(shape, runs["a"].model.config.vocab_size, seed=world.rank)
    for repeat in range(repeats + 1):  # the first is a warm-up; (a) and (b) alternate, under the same load
        for design, run in runs.items():
            world.barrier()
            t0 = time.perf_counter()
            loop.update(run, samples)
            world.barrier()
            seconds[design] += [time.perf_counter() - t0] if repeat else []
    for design, times in seconds.items():
        if world.is_main:
            print(json.dumps({"bench": "update_time", "model": model_name, "world_size": world.size,
                              "design": design, "samples_per_rank": len(samples), **shape,
                              "median_update_s": statistics.median(times), "updates_s": times}), flush=True)
    distributed.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="/tmp/bench_distributed")
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per design (after a warm-up)")
    parser.add_argument("--skip-time", action="store_true", help="no step time")
    parser.add_argument("--skip-update", action="store_true", help="no update time, design (a) against (b)")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--update-worker", choices=sorted(UPDATE_SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        return memory_worker()
    if args.update_worker:
        return update_worker(args.update_worker, args.repeats)
    for nproc in (None, 2):
        print(json.dumps(memory(nproc)), flush=True)
    if not args.skip_update:
        for model_name in UPDATE_SHAPES:
            for line in update_times(model_name, args.repeats):
                print(json.dumps(line), flush=True)
    if not args.skip_time:
        for nproc in (None, 1, 2):
            print(json.dumps(step_times(Path(args.out), nproc, args.steps)), flush=True)


if __name__ == "__main__":
    main()
