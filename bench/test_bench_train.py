"""One RL^V training step (sampling with in-cache scoring, grading, unified update with the
verifier) against one TRL GRPOTrainer step at the same settings, on the CPU.

Settings (as measured for TRL in ../shared/README.md): a random Llama with 4 layers,
hidden 256 and the char vocabulary; 4 prompts x 8 samples; 48 new tokens (a random model
rarely stops early; the mean completion length is recorded); no KL. TRL took about 0.87 s per
optimizer step on this machine; the target is at most half of that. The TRL side runs only
where `trl` is installed (it is optional and not a dependency: it must not pull another
torch). Run: `pytest bench/test_bench_train.py --benchmark-only`.
"""
from __future__ import annotations

import resource

import pytest
import torch

from rlvfast.models import TinyModelConfig, build_tiny_model, load_model
from rlvfast.synthetic import make_problems

NUM_PROMPTS, GROUP_SIZE, MAX_NEW_TOKENS = 4, 8, 48
TRL_STEPS = 5


@pytest.fixture(scope="module")
def bench_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("bench_train") / "m",
                            TinyModelConfig(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("verifier_coef", [1.0, 0.0], ids=["rlv", "base"])
def test_bench_rlv_step(benchmark, bench_model_dir, tmp_path, verifier_coef):
    from rlvfast import Sampler
    from rlvfast.grading import Grader
    from rlvfast.rl_loss import LossConfig
    from rlvfast.train import Run, rl_step
    from rlvfast.train_config import TINY_VERIFY_PROMPT, TrainConfig

    config = TrainConfig(model=str(bench_model_dir), out=str(tmp_path), group_size=GROUP_SIZE,
                         prompts_per_step=NUM_PROMPTS, micro_batch=NUM_PROMPTS * GROUP_SIZE,
                         max_new_tokens=MAX_NEW_TOKENS, verifier_coef=verifier_coef, lr=1e-5, eval_problems=0)
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
    benchmark.pedantic(one_step, rounds=5, iterations=1)
    grader.close()
    last = timings[-1]
    benchmark.extra_info.update({
        "samples": NUM_PROMPTS * GROUP_SIZE, "new_tokens": MAX_NEW_TOKENS, "verifier_coef": verifier_coef,
        "mean_sampling_s": sum(m["time/sampling"] for m in timings) / len(timings),
        "mean_grading_s": sum(m["time/grading"] for m in timings) / len(timings),
        "mean_update_s": sum(m["time/update"] for m in timings) / len(timings),
        "mean_completion_tokens": sum(m["completions/mean_length"] for m in timings) / len(timings),
        "train_tokens": last["num_train_tokens"], "peak_rss_mib": _peak_rss_mib(),
        "trl_reference_s": 0.87})


def test_bench_trl_grpo_step(benchmark, bench_model_dir, tmp_path):
    """TRL's GRPOTrainer.train() for TRL_STEPS optimizer steps; extra_info has the time per step.
    (trl is not installed on the development machine, so this side was not run there.)"""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    from rlvfast.grading import is_correct

    model, tok = load_model(bench_model_dir)
    problems = make_problems(NUM_PROMPTS * TRL_STEPS, "train", seed=0)
    dataset = Dataset.from_list([{"prompt": p.problem + "\n", "answer": p.answer} for p in problems])

    def reward(prompts, completions, answer, **kwargs):
        return [float(is_correct(c, a)) for c, a in zip(completions, answer)]

    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=NUM_PROMPTS * GROUP_SIZE,
                          num_generations=GROUP_SIZE, max_completion_length=MAX_NEW_TOKENS, beta=0.0,
                          max_steps=TRL_STEPS, logging_steps=TRL_STEPS, save_strategy="no", report_to=[],
                          use_cpu=True, bf16=False, learning_rate=1e-5)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=tok)
    benchmark.pedantic(trainer.train, rounds=1, iterations=1)
    benchmark.extra_info.update({"steps": TRL_STEPS, "seconds_per_step": benchmark.stats.stats.mean / TRL_STEPS,
                                 "peak_rss_mib": _peak_rss_mib()})
