"""What `Sampler.generate` returns: one `RequestOutput` per prompt holding n `Completion`s.

Plain records, no behaviour. `token_ids` are exactly the sampled ids (token in, token out):
they include a final EOS id when the sample ended on one, and the token that completed a
stop string; `text` leaves both out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class Completion:
    text: str                 # decoded solution: no EOS, cut before the first stop string
    token_ids: list[int]      # every sampled id, the final EOS / stop-completing token included
    logprobs: torch.Tensor    # float32 [len(token_ids)]: log-prob of each token under the distribution it was drawn from
    finish_reason: str        # "stop" (EOS or stop string) or "length" (max_tokens or the context)
    answer: str | None = None  # rlvfast.answers.extract_answer(text): the one answer rule
    score: float | None = None  # P("Yes") after the verification prompt; None when not scored
    stop_reason: int | str | None = None  # the EOS id or stop string that ended it, as in vLLM
    # P("Yes") of the first L tokens for each L of generate(score_at=...) the sample ran past
    # (read through its KV cache at that step; a sample that ended by L has only `score`)
    budget_scores: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class RequestOutput:
    prompt: str | None            # the prompt text (None when given as token ids)
    prompt_token_ids: list[int]
    completions: list[Completion] = field(default_factory=list)
