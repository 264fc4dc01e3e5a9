"""The verification row: the one rule the sampler and the trainer must apply identically.

A sample is verified on `[prompt ids, solution ids, verify ids]`, P("Yes") read at the last
position, where the solution is every sampled id but a final EOS id (the EOS ends the
sample; it is not part of what the sample wrote; an EOS elsewhere, as under ignore_eos,
stays). The trainer's verifier rows (`rlvfast.train.loss.build_rows`), the re-encoding of
`Sampler.score` and the in-cache verification of `Sampler.generate` all build their tokens
here; if they differed, the trained verifier would be scored on rows it never saw.

The in-cache form: when a sample is verified, its KV cache holds its prompt and all its
sampled ids but the newest one (a sampled id is only fed by the next decode step, which an
ended sample never takes and a `score_at` look-ahead runs before), so the verification feeds
`verification_tail` through it, and

    prompt_ids + completion_ids[:-1] + verification_tail(...) == verification_row(...)

Not here: running the forwards (runner.py, reencode.py) or the verify prompt's text (prompts.py).
"""
from __future__ import annotations

from collections.abc import Collection, Sequence


def solution_ids(completion_ids: Sequence[int], eos_ids: Collection[int]) -> list[int]:
    """The sampled ids the verifier sees: all of them but a final EOS id."""
    ids = list(completion_ids)
    return ids[:-1] if ids and ids[-1] in eos_ids else ids


def verification_row(prompt_ids: Sequence[int], completion_ids: Sequence[int], eos_ids: Collection[int],
                     verify_ids: Sequence[int]) -> list[int]:
    """[prompt ids, solution ids (a final EOS left out), verify ids]: the whole sequence whose
    last position gives P("Yes") (the trainer's row, `Sampler.score`'s re-encoding)."""
    return list(prompt_ids) + solution_ids(completion_ids, eos_ids) + list(verify_ids)


def verification_tail(completion_ids: Sequence[int], eos_ids: Collection[int], verify_ids: Sequence[int]) -> list[int]:
    """The ids the in-cache verification feeds after the prompt + completion_ids[:-1] the
    sample's cache holds: the last sampled id unless it is an EOS, then the verify ids."""
    num_cached = max(len(completion_ids) - 1, 0)
    return solution_ids(completion_ids, eos_ids)[num_cached:] + list(verify_ids)
