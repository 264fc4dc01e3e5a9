"""One RL^V training step (sampling, grading, the unified update with the verifier, AdamW)
against one TRL GRPOTrainer step at the same settings, on the CPU.

Settings (as measured for TRL in ../shared/README.md): a random Llama with 4 layers,
hidden 256 and the char vocabulary; 4 prompts x 8 samples; at most 48 new tokens (a random
model rarely stops early; the mean completion length is recorded); no KL; lr 1e-5; one
optimizer step per batch. TRL took about 0.87 s per optimizer step on this machine; the
target is at most half of that. Both sides run on RLVFAST_BENCH_THREADS torch threads (1 by
default: the machine is shared; set 2 on a quiet one) and record it with the load average.

Ours: one warm-up step, then 5 timed steps (`time/sampling`, `time/grading`, `time/update`
from the step's metrics, medians in extra_info). TRL: `GRPOTrainer.train()` for TRL_STEPS
steps, each step timed by a callback; the first (warm-up) is dropped from min/median. TRL's
side runs only where `trl` (and `datasets`) are installed: it is an optional peer, not a
dependency, and must be installed without moving torch (`pip install trl datasets -c
constraints` with torch pinned). TRL runs twice: with its default GRPOConfig gradient
checkpointing (on: the forward is recomputed in the backward) and with it off (its faster
setting on a CPU, where memory is no issue); ours never recomputes.
Run: `pytest bench/test_bench_train.py --benchmark-only`.
"""
from __future__ import annotations

import os
import resource
import statistics
import time

import pytest
import torch

from rlvfast.models import TinyModelConfig, build_tiny_model, load_model
from rlvfast.tasks.synthetic import make_problems

NUM_PROMPTS, GROUP_SIZE, MAX_NEW_TOKENS, LR = 4, 8, 48, 1e-5
OUR_STEPS, TRL_STEPS = 5, 6
THREADS = int(os.environ.get("RLVFAST_BENCH_THREADS", "1"))


@pytest.fixture(scope="module")
def bench_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("bench_train") / "m",
                            TinyModelConfig(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024))


@pytest.fixture()
def threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(saved)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _machine(threads: int) -> dict:
    return {"threads": threads, "load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count()}


@pytest.mark.parametrize("verifier_coef", [1.0, 0.0], ids=["rlv", "base"])
def test_bench_rlv_step(benchmark, bench_model_dir, tmp_path, threads, verifier_coef):
    from rlvfast import Sampler
    from rlvfast.tasks.grading import Grader
    from rlvfast.train.loss import LossConfig
    from rlvfast.train.loop import Run, rl_step
    from rlvfast.train.config import TINY_VERIFY_PROMPT, TrainConfig

    config = TrainConfig(model=str(bench_model_dir), out=str(tmp_path), group_size=GROUP_SIZE,
                         prompts_per_step=NUM_PROMPTS, micro_batch=NUM_PROMPTS * GROUP_SIZE,
                         max_new_tokens=MAX_NEW_TOKENS, verifier_coef=verifier_coef, lr=LR, eval_problems=0)
    model, tok = load_model(bench_model_dir)
    sampler = Sampler(model, tok, verify_prompt=TINY_VERIFY_PROMPT)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    grader = Grader(timeout=config.grader_timeout)
    run = Run(config, model, tok, sampler, optimizer, grader, None,
              LossConfig(verifier_coef=verifier_coef), None, torch.device("cpu"))
    problems = make_problems(NUM_PROMPTS, "train", seed=0)
    state = {"step": 0}
    timings = []

    def one_step():
        metrics, _ = rl_step(run, problems, state["step"])
        state["step"] += 1
        timings.append(metrics)

    rl_step(run, problems, 1000)  # warm-up: first-call costs (thread pools, grader workers)
    benchmark.pedantic(one_step, rounds=OUR_STEPS, iterations=1)
    grader.close()
    assert all(not m["skipped"] for m in timings)
    median = lambda key: statistics.median(m[key] for m in timings)  # noqa: E731
    benchmark.extra_info.update({
        **_machine(threads), "samples": NUM_PROMPTS * GROUP_SIZE, "new_tokens": MAX_NEW_TOKENS,
        "verifier_coef": verifier_coef, "median_sampling_s": median("time/sampling"),
        "median_grading_s": median("time/grading"), "median_update_s": median("time/update"),
        "mean_completion_tokens": median("completions/mean_length"),
        "train_tokens": timings[-1]["num_train_tokens"], "peak_rss_mib": _peak_rss_mib(), "trl_reference_s": 0.87})


@pytest.mark.parametrize("checkpointing", [True, False], ids=["default-gc", "no-gc"])
def test_bench_trl_grpo_step(benchmark, bench_model_dir, tmp_path, threads, checkpointing):
    """TRL's GRPOTrainer.train() for TRL_STEPS optimizer steps; extra_info has min/median per step."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import TrainerCallback

    from rlvfast.tasks.grading import is_correct

    model, tok = load_model(bench_model_dir)
    problems = make_problems(NUM_PROMPTS * TRL_STEPS, "train", seed=0)
    dataset = datasets.Dataset.from_list([{"prompt": p.problem + "\n", "answer": p.answer} for p in problems])
    grading = []

    def reward(prompts, completions, answer, **kwargs):
        t0 = time.perf_counter()
        out = [float(is_correct(c, a)) for c, a in zip(completions, answer)]
        grading.append(time.perf_counter() - t0)
        return out

    step_times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=NUM_PROMPTS * GROUP_SIZE,
                          num_generations=GROUP_SIZE, max_completion_length=MAX_NEW_TOKENS, beta=0.0,
                          max_steps=TRL_STEPS, logging_steps=TRL_STEPS, save_strategy="no", report_to=[],
                          use_cpu=True, bf16=False, learning_rate=LR, gradient_checkpointing=checkpointing,
                          disable_tqdm=True)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=tok, callbacks=[StepTimer()])
    benchmark.pedantic(trainer.train, rounds=1, iterations=1)
    timed = step_times[1:]  # the first step pays one-time costs
    benchmark.extra_info.update({
        **_machine(threads), "trl_version": trl.__version__, "gradient_checkpointing": checkpointing,
        "steps": len(step_times), "step_s": step_times, "min_step_s": min(timed),
        "median_step_s": statistics.median(timed), "median_grading_s": statistics.median(grading[1:]),
        "peak_rss_mib": _peak_rss_mib()})
