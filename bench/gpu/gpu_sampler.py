"""Step `sampler`: rlvfast's Sampler against HF `generate` on the random model, same prompts and batch.

prompts x samples x new tokens at fixed length (ours: ignore_eos; HF: min_new_tokens), bf16
weights, temperature 1, no top-k / top-p. Ours scores every sample in its own KV cache as it ends
(P("Yes") after the 16-token verification prompt); the time inside that verification is measured
(the device synchronized around it) and reported as its share of the rest of the run, as in
bench/test_bench_sampler.py. One small warm-up run of each side first (kernel compilation).
"""
from __future__ import annotations

import time

import torch

from gpu_common import StepContext, peak_memory_bytes, synchronize, timed
from gpu_model import VERIFY_PROMPT, model_dir, problem_texts


def load(ctx: StepContext):
    from rlvfast.models import load_model

    start = time.perf_counter()
    model, tok = load_model(model_dir(ctx.sizes.model, ctx.work_dir, ctx.device), device=ctx.device)
    model.to(torch.bfloat16)
    ctx.record(model=ctx.sizes.model.name, num_params=ctx.sizes.model.num_params,
               build_and_load_s=time.perf_counter() - start)
    return model, tok


def run_ours(sampler, prompts: list[str], n: int, tokens: int, device: torch.device) -> dict:
    """One scored generation: seconds, tokens, and the seconds inside the in-cache verification."""
    from rlvfast import SamplingParams

    verify_s, real_verify = [], sampler._verify

    def timed_verify(*args):
        verify_s.append(timed(lambda: real_verify(*args), device))

    sampler._verify = timed_verify  # this instance only
    try:
        params = SamplingParams(n=n, max_tokens=tokens, seed=0, ignore_eos=True)
        outputs = []
        seconds = timed(lambda: outputs.extend(sampler.generate(prompts, params, score=True)), device)
    finally:
        del sampler._verify
    num_tokens = sum(len(c.token_ids) for o in outputs for c in o.completions)
    scored = sum(c.score is not None for o in outputs for c in o.completions)
    return {"seconds": seconds, "tokens": num_tokens, "verify_s": sum(verify_s), "verify_calls": len(verify_s),
            "scored": scored}


def run_hf(sampler, prompts: list[str], n: int, tokens: int, device: torch.device) -> dict:
    """HF generate on the same left-padded batch, n return sequences, exactly `tokens` new tokens."""
    tok = sampler.tokenizer
    ids = [sampler.encode(p) for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids], device=device)  # (P, T)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)  # (P, T)
    out = []

    def generate():
        with torch.inference_mode():
            out.append(sampler.model.generate(
                input_ids=input_ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                num_return_sequences=n, max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tok.pad_token_id))
    torch.manual_seed(0)
    seconds = timed(generate, device)
    return {"seconds": seconds, "tokens": int(out[0][:, width:].numel())}


def sampler_step(ctx: StepContext) -> None:
    from rlvfast import Sampler
    from rlvfast.sampler import format_prompt

    s = ctx.sizes
    model, tok = load(ctx)
    sampler = Sampler(model, tok, verify_prompt=VERIFY_PROMPT)
    prompts = [format_prompt(tok, p) for p in problem_texts(s.sampler_prompts)]
    ctx.record(prompts=s.sampler_prompts, samples=s.sampler_samples, new_tokens=s.sampler_tokens,
               prompt_tokens_mean=sum(len(sampler.encode(p)) for p in prompts) / len(prompts),
               verify_tokens=len(sampler.verify_ids))
    run_ours(sampler, prompts[:2], 2, 4, ctx.device)  # warm-up
    ours = run_ours(sampler, prompts, s.sampler_samples, s.sampler_tokens, ctx.device)
    generate_s = ours["seconds"] - ours["verify_s"]
    ours |= {"tokens_per_s": ours["tokens"] / ours["seconds"],
             "tokens_per_s_without_verify": ours["tokens"] / generate_s, "verify_share": ours["verify_s"] / generate_s}
    ctx.record(ours=ours, peak_memory_bytes=peak_memory_bytes(ctx.device))
    run_hf(sampler, prompts[:2], 2, 4, ctx.device)  # warm-up
    hf = run_hf(sampler, prompts, s.sampler_samples, s.sampler_tokens, ctx.device)
    hf["tokens_per_s"] = hf["tokens"] / hf["seconds"]
    synchronize(ctx.device)
    ctx.record(hf=hf, speedup=ours["tokens_per_s"] / hf["tokens_per_s"])
