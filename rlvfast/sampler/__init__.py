"""Batched KV-cache sampling with one-pass score-while-generate (`Sampler`).

`Sampler(model, tokenizer).generate(prompts, SamplingParams(n=8))` returns one
`RequestOutput` per prompt with n `Completion`s, each scored with P("Yes") read through
its own KV cache as it ends. Files, one noun each: params (SamplingParams), outputs
(Completion, RequestOutput), sequence (per-sample state), kv_cache (KVCache), runner
(ModelRunner: prefill / decode_step / verify), fast_trunk (FastTrunk: a lean Llama/Qwen2
forward), rng (per-sample counter-based uniforms), sampling (sample_tokens), prompts (format_prompt, build_verify_prompt), reference
(reencoded_scores), sampler (Sampler: the loop, `score`).
"""
from rlvfast.sampler.outputs import Completion, RequestOutput
from rlvfast.sampler.params import SamplingParams
from rlvfast.sampler.prompts import build_verify_prompt, format_prompt
from rlvfast.sampler.sampler import Sampler

__all__ = ["Sampler", "SamplingParams", "RequestOutput", "Completion", "format_prompt", "build_verify_prompt"]
