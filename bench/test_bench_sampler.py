"""Sampler benchmarks: tokens/s against HF `generate`, the cost of in-cache verification,
and prefix sharing. `python -m pytest bench/test_bench_sampler.py --benchmark-only -s`.

Shapes from the issue: 4 prompts x 8 samples x 128 new tokens, on the tiny built-in model
and on SmolLM2-135M (GGUF from ../shared, skipped when absent). Each model verifies with the
prompt it is used with: the tiny model with `rlvfast.models.TINY_VERIFY_PROMPT` (the one the
trainer teaches it), SmolLM2 with its chat template's verification turn; the verification
cost is also measured on the tiny model with the 66-character (63-token) plain-model default
("tiny-long-verify"). Both sides run with one intra-op thread (on the shared 2-core machine
two OpenMP threads get descheduled and a matmul runs ~6x slower; docs/design/sampler.md,
"Threads") under
torch.inference_mode. Rates and the load average go to `benchmark.extra_info` and are
printed; nothing is asserted about speed.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from rlvfast import Sampler, SamplingParams
from rlvfast.sampler import format_prompt

SMOLLM2_GGUF = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROBLEMS = ["Compute 1+2.", "Compute 33+4-5.", "Compute 7-1+8-2+9.", "What is 12 times 7, minus 5?"]
NUM_SAMPLES, NEW_TOKENS = 8, 128


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
        from rlvfast.train.warm_start import TINY_VERIFY_PROMPT

        model, tok = load_model(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))
        s = Sampler(model, tok, verify_prompt=TINY_VERIFY_PROMPT)
    else:
        if not SMOLLM2_GGUF.exists():
            pytest.skip(f"{SMOLLM2_GGUF} not present")
        model, tok = load_model(SMOLLM2_GGUF)
        s = Sampler(model, tok)
    s.name = request.param
    return s


def prompts_of(sampler: Sampler) -> list[str]:
    return [format_prompt(sampler.tokenizer, p) for p in PROBLEMS]


def hf_generate(sampler: Sampler, prompts: list[str], fixed_length: bool, seed: int = 0) -> tuple[float, int]:
    """Seconds and new tokens (up to and including EOS) of HF generate on the same batch."""
    tok, model = sampler.tokenizer, sampler.model
    ids = [sampler.encode(p) for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                             num_return_sequences=NUM_SAMPLES, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS if fixed_length else 0, pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - start
    new = out[:, width:]
    num_tokens = 0
    for row in new.tolist():  # count up to and including the first EOS
        ends = [k for k, t in enumerate(row) if t in sampler.eos_ids]
        num_tokens += ends[0] + 1 if ends and not fixed_length else len(row)
    return seconds, num_tokens


@pytest.mark.parametrize("lengths", ["fixed", "natural"])
def test_bench_generate_vs_hf(benchmark, sampler, lengths):
    fixed = lengths == "fixed"
    prompts = prompts_of(sampler)
    params = SamplingParams(n=NUM_SAMPLES, max_tokens=NEW_TOKENS, seed=0, ignore_eos=fixed)
    hf_seconds, hf_tokens = hf_generate(sampler, prompts, fixed)
    outputs = benchmark.pedantic(sampler.generate, args=(prompts, params), kwargs={"score": False},
                                 rounds=2 if sampler.name == "tiny" else 1, iterations=1)
    ours_tokens = sum(len(c.token_ids) for o in outputs for c in o.completions)
    ours_seconds = benchmark.stats.stats.min
    info = {"model": sampler.name, "lengths": lengths, "ours_tok_s": ours_tokens / ours_seconds,
            "hf_tok_s": hf_tokens / hf_seconds, "ours_tokens": ours_tokens, "hf_tokens": hf_tokens,
            "hf_seconds": hf_seconds, "loadavg_1m": os.getloadavg()[0]}
    info["speedup"] = info["ours_tok_s"] / info["hf_tok_s"]
    benchmark.extra_info.update(info)
    print(f"\n{info}")


@pytest.mark.parametrize("verify", ["model", "long"])
def test_bench_verification_cost(benchmark, sampler, verify):
    """Generation with and without in-cache scores (alternating, several rounds on the tiny
    model), the time inside the in-loop verification, and re-encoding with Sampler.score."""
    if verify == "long":
        if sampler.name != "tiny":
            pytest.skip("the long plain-model prompt is the tiny model's alternative only")
        from rlvfast.sampler.prompts import PLAIN_VERIFY_PROMPT

        sampler = Sampler(sampler.model, sampler.tokenizer, verify_prompt=PLAIN_VERIFY_PROMPT)
        sampler.name = "tiny-long-verify"
    prompts = [format_prompt(sampler.tokenizer, p) for p in PROBLEMS]
    params = SamplingParams(n=NUM_SAMPLES, max_tokens=NEW_TOKENS, seed=1)
    rounds = 5 if sampler.name.startswith("tiny") else 2
    plain_seconds, verify_seconds = [], []
    real_verify = sampler._verify

    def timed_verify(*args):
        start = time.perf_counter()
        real_verify(*args)
        verify_seconds[-1] += time.perf_counter() - start

    def plain_then_arm():  # untimed setup of each round: one generation without scores
        start = time.perf_counter()
        sampler.generate(prompts, params, score=False)
        plain_seconds.append(time.perf_counter() - start)
        verify_seconds.append(0.0)

    sampler.generate(prompts, params, score=True)  # warm-up
    sampler._verify = timed_verify
    try:
        outputs = benchmark.pedantic(sampler.generate, args=(prompts, params), kwargs={"score": True},
                                     setup=plain_then_arm, rounds=rounds, iterations=1)
    finally:
        del sampler._verify
    scored = list(benchmark.stats.stats.data)
    reencode = []
    for _ in range(2 if rounds > 1 else 1):
        start = time.perf_counter()
        sampler.score(prompts, [o.completions for o in outputs])
        reencode.append(time.perf_counter() - start)
    med = statistics.median
    shares = [v / (s - v) for s, v in zip(scored, verify_seconds)]
    info = {"model": sampler.name, "verify_tokens": len(sampler.verify_ids), "rounds": rounds,
            "generate_s_min": min(plain_seconds), "generate_s_median": med(plain_seconds),
            "generate_and_verify_s_min": min(scored), "generate_and_verify_s_median": med(scored),
            "in_cache_verify_s_median": med(verify_seconds), "in_cache_verify_s_min": min(verify_seconds),
            "verify_share_of_generate_median": med(shares),
            "wall_overhead_median": med(scored) / med(plain_seconds) - 1,
            "wall_overhead_min": min(scored) / min(plain_seconds) - 1, "reencode_s_min": min(reencode),
            "reencode_over_in_cache": min(reencode) / min(verify_seconds),
            "mean_tokens": sum(len(c.token_ids) for o in outputs for c in o.completions) / (4 * NUM_SAMPLES),
            "loadavg_1m": os.getloadavg()[0]}
    benchmark.extra_info.update(info)
    print(f"\n{info}")


def test_bench_prefix_sharing(benchmark, sampler):
    """16 samples of one 256-token prompt: one prefill + 16 cache-row copies vs 16 prefills."""
    runner = sampler.runner
    prompt = (sampler.encode(prompts_of(sampler)[0]) * 64)[:256]
    share = torch.zeros(16, dtype=torch.long)

    def shared():
        with torch.inference_mode():
            cache, logits = runner.prefill([prompt], capacity=0)
            return cache.copy_rows(share, capacity=cache.length + NEW_TOKENS), logits[share]

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    one_prompt = min(timed(lambda: runner.prefill([prompt], capacity=0)) for _ in range(2))
    with torch.inference_mode():
        sixteen = timed(lambda: runner.prefill([prompt] * 16, capacity=0))
    benchmark.pedantic(shared, rounds=3, iterations=1)
    info = {"model": sampler.name, "one_prompt_prefill_s": one_prompt, "shared_16_samples_s": benchmark.stats.stats.min,
            "sixteen_prefills_s": sixteen, "loadavg_1m": os.getloadavg()[0]}
    info["shared_over_one"] = info["shared_16_samples_s"] / one_prompt
    info["sixteen_over_shared"] = sixteen / info["shared_16_samples_s"]
    benchmark.extra_info.update(info)
    print(f"\n{info}")
