"""`Sequence`: the state of one sample while it is generated (tokens, log-probs, status).

A sample lives in one row of the decode batch until it finishes; then it is verified
(optionally) and leaves the batch. No tensors here, only Python state the loop updates.
What the verifier sees of it is `verification.solution_ids(token_ids, eos_ids)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto


class SequenceStatus(Enum):
    RUNNING = auto()      # in the decode batch
    FINISHED = auto()     # stopped; verified when scoring


@dataclass(slots=True)
class Sequence:
    seq_id: int
    prompt_index: int
    num_prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.RUNNING
    finish_reason: str | None = None   # "stop" or "length"
    stop_reason: int | str | None = None  # the EOS id or the stop string
    score: float | None = None
    key: int | None = None             # its random stream (rng.py); None when greedy
    budget_scores: dict[int, float] = field(default_factory=dict)  # generate(score_at=...)
    max_tokens: int | None = None      # its own budget of new tokens (continue_from); None: the params'

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append(self, token_id: int, logprob: float) -> None:
        self.token_ids.append(token_id)
        self.logprobs.append(logprob)

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason
