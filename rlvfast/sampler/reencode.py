"""`reencoded_scores`: the reference P("Yes"), encoding each verification sequence from scratch.

One plain forward of the Hugging Face model per batch (right padding with a 2D attention
mask, so HF's own positions are right; no KV cache, none of our cache or FastTrunk code),
then P("Yes") at each row's last real position. `Sampler.score` and the tests and benchmarks
that check the in-cache scores use it. Not here: building the sequences
(`verification.verification_row`).
"""
from __future__ import annotations

import torch

from rlvfast.sampler.runner import ModelRunner, p_yes


@torch.inference_mode()
def reencoded_scores(runner: ModelRunner, rows: list[list[int]]) -> torch.Tensor:
    """rows: token id lists (each ends with the verification prompt) -> P("Yes") (B,) float32."""
    device, width = runner.device, max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)  # (B, T) right padding
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    last = torch.tensor([len(r) - 1 for r in rows], device=device)  # (B,)
    batch = torch.arange(len(rows), device=device)
    if not runner.is_plain_head:
        logits = runner.model(input_ids=input_ids, attention_mask=mask).logits[batch, last].float()  # (B, V)
        return torch.softmax(logits, dim=-1)[:, runner.yes_id]
    hidden = runner.trunk(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    return p_yes(hidden[batch, last], runner.head_weight, runner.yes_id, runner.no_id)
