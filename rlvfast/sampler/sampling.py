"""`sample_tokens`: draws one token per row from logits, with the log-prob it was drawn with.

Temperature, then top-k, then top-p (vLLM's order), then a draw from a seeded
torch.Generator. The returned log-prob is that of the token under the final (filtered,
renormalized) distribution; greedy (temperature 0) takes the argmax and reports the plain
log-softmax at temperature 1. Not here: stopping, batching, the model.
"""
from __future__ import annotations

import torch

from rlvfast.sampler.params import SamplingParams


def sample_tokens(logits: torch.Tensor, params: SamplingParams,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) float32 -> (token ids (B,) long, log-probs (B,) float32)."""
    if params.is_greedy:
        log_probs = torch.log_softmax(logits, dim=-1)  # (B, V)
        tokens = log_probs.argmax(dim=-1)
        return tokens, log_probs.gather(1, tokens[:, None])[:, 0]
    logits = logits / params.temperature if params.temperature != 1.0 else logits
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        logits = _top_p_filter(logits, params.top_p)
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, V)
    # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i.
    race = torch.empty_like(log_probs).exponential_(generator=generator).clamp_min_(1e-30)
    tokens = (log_probs - race.log()).argmax(dim=-1)
    return tokens, log_probs.gather(1, tokens[:, None])[:, 0]


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keeps the smallest set of most likely tokens whose probability reaches top_p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V): mass of strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))  # the top token always stays
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
