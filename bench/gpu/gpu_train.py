"""Step `train`: two RL^V steps of the random model through the trainer's own entry point,
`rlvfast.train.loop.train` (what `python -m rlvfast.train` runs), --dtype bf16, group 8.

Each step samples prompts x group solutions of exactly new-tokens tokens (a random model
almost never samples its EOS), grades them (the time-limited grader: noise is never right, so
every reward is 0 and the advantages are 0; the forward, backward and optimizer step do the same
work as with real rewards), and makes one unified update with the verifier rows (lambda 0.05).
The split comes from each step's own `time/*` metrics in OUT/metrics.jsonl; the first step also
pays the one-time costs (kernel compilation, the grader's worker start). Wall time outside the
steps: setup, the checkpoint after step 2 and the final model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from gpu_common import StepContext, peak_memory_bytes
from gpu_model import VERIFY_PROMPT, model_dir

METRICS = ("step", "time/sampling", "time/grading", "time/update", "tokens_per_second", "completions/mean_length",
           "num_train_tokens", "loss", "grad_norm", "reward")
NUM_STEPS = 2


def train_config(ctx: StepContext):
    from rlvfast.train.config import TrainConfig

    s = ctx.sizes
    return TrainConfig(model=str(model_dir(s.model, ctx.work_dir, ctx.device)), out=str(ctx.work_dir / "train_run"),
                       overwrite=True, steps=NUM_STEPS, group_size=s.train_group, prompts_per_step=s.train_prompts,
                       micro_batch=s.train_micro_batch, max_new_tokens=s.train_tokens, dtype="bf16",
                       device=s.device, lr=1e-6, warmup=0, eval_problems=0, compare=False, log_every=1,
                       verify_prompt=VERIFY_PROMPT, checkpoint_every=NUM_STEPS)


def read_steps(run_dir: Path) -> list[dict]:
    """Each step's METRICS from run_dir/metrics.jsonl, with step_s = sampling + grading + update."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [{k: m.get(k) for k in METRICS} for m in map(json.loads, lines)]
    for m in steps:
        m["step_s"] = m["time/sampling"] + m["time/grading"] + m["time/update"]
    return steps


def train_step(ctx: StepContext) -> None:
    from rlvfast.train.loop import train

    config = train_config(ctx)
    ctx.record(model=ctx.sizes.model.name, dtype=config.dtype, group_size=config.group_size,
               prompts_per_step=config.prompts_per_step, max_new_tokens=config.max_new_tokens,
               micro_batch=config.micro_batch, verifier_coef=config.verifier_coef)
    start = time.perf_counter()
    train(config, log=ctx.log)
    wall = time.perf_counter() - start
    steps = read_steps(ctx.work_dir / "train_run")
    ctx.record(steps=steps, wall_s=wall, outside_steps_s=wall - sum(m["step_s"] for m in steps),
               peak_memory_bytes=peak_memory_bytes(ctx.device))
    if len(steps) != NUM_STEPS:
        raise RuntimeError(f"metrics.jsonl has {len(steps)} steps, expected {NUM_STEPS}")
