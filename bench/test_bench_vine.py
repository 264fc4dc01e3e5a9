"""VinePPO's Monte Carlo rollouts: K = 9 continuations from each step boundary of 100-token
solutions, through forked KV caches against re-prefilling each prefix.
`python -m pytest bench/test_bench_vine.py --benchmark-only -s`.

Three ways to get the same continuations (same seeds, same samples):
- fork: `Sampler.continue_from`: one prefill per rollout up to its last boundary, the forks'
  KV gathered from it, one decode step per boundary (continuation.py);
- reprefill: `continue_from(reprefill=True)`: each state (prompt + prefix) prefilled on its
  own once and shared by its K continuations (generate() on the states);
- per continuation: every continuation prefills its state (HF generate, or an engine without
  prefix caching); its prefix cost is measured as one prefill of every state repeated K times,
  its decode cost is the same as the others'.
The decode work (the continuations' new tokens) is identical in all three, so each is reported
twice: the prefix cost alone (the time to the forks' first logits) and the whole MC phase.
"prefill share" (the fork's prefix time over its total) bounds what keeping each rollout's
cache from generate() instead of one re-prefill could save.

Workload: rollouts of exactly 100 sampled ids (ignore_eos), boundaries every 12.5 tokens
(8 per solution, s_0 included: about VinePPO's step count on MATH), continuations to the
rollout budget (`max_solution_tokens=100`, ignore_eos, so all three decode the same tokens).
Tiny model: 4 prompts x 2 rollouts; SmolLM2-135M (GGUF from ../shared, skipped when absent):
2 rollouts x 4 boundaries (one CPU thread: 576 rows x 100 steps of a 135M model would take
many minutes). One intra-op thread (docs/design/sampler.md, "Threads"); nothing asserted.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

import rlvfast.sampler.sampler as sampler_module
from rlvfast import Sampler, SamplingParams
from rlvfast.sampler import format_prompt

SMOLLM2_GGUF = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROBLEMS = ["Compute 1+2.", "Compute 33+4-5.", "Compute 7-1+8-2+9.", "What is 12 times 7, minus 5?"]
K, SOLUTION_TOKENS = 9, 100
WORKLOADS = {"tiny": (PROBLEMS, 2, [0, 12, 25, 37, 50, 62, 75, 87]),  # problems, rollouts each, boundaries
             "smollm2": (PROBLEMS[:1], 2, [0, 25, 50, 75])}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def sampler(request, tmp_path_factory):
    from rlvfast.models import build_tiny_model, load_model

    if request.param == "tiny":
        model, tok = load_model(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))
    else:
        if not SMOLLM2_GGUF.exists():
            pytest.skip(f"{SMOLLM2_GGUF} not present")
        model, tok = load_model(SMOLLM2_GGUF)
    s = Sampler(model, tok)
    s.name = request.param
    return s


class PrefixTimer:
    """Seconds spent getting the forks' first logits: in prefill_forks (fork) or in the
    runner's prefill of the states (reprefill)."""

    def __init__(self, sampler: Sampler, monkeypatch) -> None:
        self.seconds = 0.0
        monkeypatch.setattr(sampler_module, "prefill_forks", self.timed(sampler_module.prefill_forks))
        monkeypatch.setattr(sampler.runner, "prefill", self.timed(sampler.runner.prefill))

    def timed(self, fn):
        def wrapper(*args, **kwargs):
            start, outer = time.perf_counter(), self.seconds
            out = fn(*args, **kwargs)
            self.seconds = outer + time.perf_counter() - start  # prefill inside prefill_forks: counted once
            return out
        return wrapper


def kv_bytes_per_token(sampler: Sampler) -> int:
    config = sampler.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * sampler.runner.dtype.itemsize


def test_bench_mc_rollouts_fork_vs_reprefill(benchmark, sampler, monkeypatch):
    problems, per_problem, bounds = WORKLOADS[sampler.name]
    prompts = [format_prompt(sampler.tokenizer, p) for p in problems]
    outs = sampler.generate(prompts, SamplingParams(n=per_problem, max_tokens=SOLUTION_TOKENS, seed=0,
                                                    ignore_eos=True), score=False)
    rollout_prompts = [p for p, o in zip(prompts, outs) for _ in o.completions]
    rollouts = [c.token_ids for o in outs for c in o.completions]
    boundaries = [bounds] * len(rollouts)
    params = SamplingParams(n=K, max_tokens=SOLUTION_TOKENS, seed=1, ignore_eos=True)
    timer = PrefixTimer(sampler, monkeypatch)

    def mc(reprefill: bool) -> tuple[float, float]:
        timer.seconds = 0.0
        start = time.perf_counter()
        sampler.continue_from(rollout_prompts, rollouts, boundaries, params, max_solution_tokens=SOLUTION_TOKENS,
                              reprefill=reprefill)
        return time.perf_counter() - start, timer.seconds

    rounds = 2 if sampler.name == "tiny" else 1
    fork_runs = []
    benchmark.pedantic(lambda: fork_runs.append(mc(False)), rounds=rounds, iterations=1)
    reprefill_runs = [mc(True) for _ in range(rounds)]
    states = [sampler.encode(p) + r[:b] for p, r in zip(rollout_prompts, rollouts) for b in bounds]
    start = time.perf_counter()
    with torch.inference_mode():
        for state in states:  # the K prefills of each state that a per-continuation engine runs
            sampler.runner.prefill([state] * K, capacity=0)
    per_continuation_prefix = time.perf_counter() - start

    fork_total, fork_prefix = min(fork_runs)
    re_total, re_prefix = min(reprefill_runs)
    decode = fork_total - fork_prefix
    info = {"model": sampler.name, "rollouts": len(rollouts), "boundaries": len(bounds), "K": K,
            "new_tokens": K * sum(SOLUTION_TOKENS - b for b in bounds) * len(rollouts),
            "fork_total_s": fork_total, "fork_prefix_s": fork_prefix,
            "reprefill_total_s": re_total, "reprefill_prefix_s": re_prefix,
            "per_continuation_prefix_s": per_continuation_prefix,
            "prefix_reprefill_over_fork": re_prefix / fork_prefix,
            "prefix_per_continuation_over_fork": per_continuation_prefix / fork_prefix,
            "total_reprefill_over_fork": re_total / fork_total,
            "total_per_continuation_over_fork": (decode + per_continuation_prefix) / fork_total,
            "prefill_share_of_fork": fork_prefix / fork_total,
            "kept_caches_mib": sum(len(sampler.encode(p)) + SOLUTION_TOKENS for p in rollout_prompts)
            * kv_bytes_per_token(sampler) / 2**20,  # what generate() would hold to skip the one prefill
            "loadavg_1m": os.getloadavg()[0]}
    benchmark.extra_info.update(info)
    print(f"\n{info}")
