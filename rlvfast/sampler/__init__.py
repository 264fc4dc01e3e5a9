"""Batched KV-cache sampling with one-pass score-while-generate (`Sampler`).

`Sampler(model, tokenizer).generate(prompts, SamplingParams(n=8))` returns one
`RequestOutput` per prompt with n `Completion`s, each scored with P("Yes") read through
its own KV cache as it ends. Files, one noun each: params (SamplingParams), outputs
(Completion, RequestOutput), sequence (per-sample state), kv_cache (KVCache), runner
(ModelRunner: prefill / decode_step / verify), fast_trunk (FastTrunk: a lean Llama/Qwen2
forward on `rlvfast.models.llama`), rng (per-sample counter-based uniforms), sampling
(sample_tokens), prompts (format_prompt, build_verify_prompt), verification (the
verification row the sampler and the trainer share), reencode (reencoded_scores), continuation
(the forked caches of `Sampler.continue_from`), sampler (Sampler: the loop, `score`,
`continue_from`).

The public API (what other layers import): the names in `__all__`, from this package only.
"""
from rlvfast.sampler.outputs import Completion, RequestOutput
from rlvfast.sampler.params import SamplingParams
from rlvfast.sampler.prompts import build_verify_prompt, format_prompt
from rlvfast.sampler.runner import p_yes
from rlvfast.sampler.sampler import Sampler
from rlvfast.sampler.verification import solution_ids, verification_row, verification_tail

__all__ = ["Sampler", "SamplingParams", "RequestOutput", "Completion", "format_prompt", "build_verify_prompt",
           "solution_ids", "verification_row", "verification_tail", "p_yes"]
