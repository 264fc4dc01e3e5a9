"""`sample_tokens`: draws one token per row from logits, with the log-prob it was drawn with.

Temperature, then top-k, then top-p (vLLM's order), then one draw per row by inverting the CDF
with that row's uniform (rng.py), so a row's token depends on its own logits and uniform only,
never on the other rows. The CDF is two-level so that float32 keeps rare tokens' odds:
cumulative sums inside blocks of 256 tokens (float32, each block's own small mass) and across
blocks (float64). At batch 32 x 49k vocabulary this takes ~5 ms where an exponential race over
the whole vocabulary (vLLM's draw) took ~80 ms on this CPU (docs/design/sampler.md, "The
draw"). The returned log-prob is that of the token under the final (filtered, renormalized)
distribution; greedy (temperature 0) takes the argmax and reports the plain log-softmax at
temperature 1. Not here: stopping, batching, the model, where the uniforms come from.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlvfast.sampler.params import SamplingParams

CDF_BLOCK = 256  # tokens per float32 partial sum of the two-level CDF


def sample_tokens(logits: torch.Tensor, params: SamplingParams,
                  uniforms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) float32, uniforms (B,) float64 in [0, 1) (unused when greedy)
    -> (token ids (B,) long, log-probs (B,) float32)."""
    if params.is_greedy:
        log_probs = torch.log_softmax(logits, dim=-1)  # (B, V)
        tokens = log_probs.argmax(dim=-1)
        return tokens, log_probs.gather(1, tokens[:, None])[:, 0]
    if uniforms is None or uniforms.shape != logits.shape[:1]:
        raise ValueError(f"sample_tokens needs one uniform per row: logits {tuple(logits.shape)}, "
                         f"uniforms {None if uniforms is None else tuple(uniforms.shape)}")
    logits = logits / params.temperature if params.temperature != 1.0 else logits
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        logits = _top_p_filter(logits, params.top_p)
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, V)
    tokens = inverse_cdf(log_probs.exp(), uniforms)
    return tokens, log_probs.gather(1, tokens[:, None])[:, 0]


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor, block: int = CDF_BLOCK) -> torch.Tensor:
    """The first token whose cumulative probability exceeds u * total, per row: probs (B, V)
    float32 (zeros allowed, never drawn), uniforms (B,) float64 -> token ids (B,) long."""
    rows, vocab = probs.shape
    blocks = F.pad(probs, (0, (-vocab) % block)).view(rows, -1, block)  # (B, nb, block)
    within = blocks.cumsum(dim=-1)  # (B, nb, block) float32 partial sums inside each block
    across = within[:, :, -1].double().cumsum(dim=-1)  # (B, nb) float64 CDF at block ends
    total = across[:, -1:]  # (B, 1)
    target = torch.minimum(uniforms.to(across)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    # (B, 1): first block whose end exceeds target (the clamps bind only on NaN logits, which
    # would otherwise index past the end: a device assert on a GPU)
    b = torch.searchsorted(across, target, right=True).clamp_(max=across.shape[1] - 1)
    before = torch.where(b > 0, across.gather(1, (b - 1).clamp_min(0)), torch.zeros_like(target))  # (B, 1)
    row = within.gather(1, b[:, :, None].expand(rows, 1, block))[:, 0]  # (B, block)
    last = row[:, -1:]
    rest = torch.minimum((target - before).to(row.dtype), torch.nextafter(last, torch.zeros_like(last)))
    j = torch.searchsorted(row, rest.contiguous(), right=True)  # (B, 1): first token whose sum exceeds rest
    return (b * block + j)[:, 0].clamp_(max=vocab - 1)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keeps the smallest set of most likely tokens whose probability reaches top_p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V): mass of strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))  # the top token always stays
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
