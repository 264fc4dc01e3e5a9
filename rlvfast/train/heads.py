"""The lm head in the update, outside the loss: its weight, P("Yes") at the verifier rows, and the
frozen reference model's log-probs for the KL term.

The trainer computes log-probs from hidden states and the head's weight (`rlvfast.ops`, no
[B, T, V] logits), so `lm_head_weight` refuses a head with a bias. `p_yes` is the Sampler's
score (full-vocabulary softmax, `rlvfast.sampler.p_yes`) read off the update's own forward.
Not here: the loss (`rlvfast.train.loss`), the trunk forward (`rlvfast.train.forward`).
"""
from __future__ import annotations

import torch

from rlvfast.cli import UserError
from rlvfast.sampler import p_yes as sampler_p_yes
from rlvfast.train.loss import RowBatch
from rlvfast.train.precision import autocast


def lm_head_weight(model) -> torch.Tensor:
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise UserError("the trainer computes log-probs from hidden states and the lm head weight; "
                        "an lm head with a bias is not supported")
    return head.weight  # (V, H)


def p_yes(hidden: torch.Tensor, weight: torch.Tensor, verifier_index: torch.Tensor,
          score_ids: tuple[int, int]) -> list[float]:
    """P("Yes") at the verifier rows of one forward (the Sampler's score: full-vocabulary softmax)."""
    with torch.no_grad():
        rows = hidden.detach().reshape(-1, hidden.shape[-1]).index_select(0, verifier_index).to(weight.dtype)  # (B, H)
        return sampler_p_yes(rows, weight.detach(), *score_ids).tolist()


def add_ref_logprobs(ref_model: torch.nn.Module, rows: list[RowBatch], temperature: float,
                     device: torch.device, dtype: str = "auto") -> None:
    """Set each row batch's `ref_logprobs`: its policy tokens' log-probs under the frozen reference."""
    from rlvfast import ops

    with torch.no_grad(), autocast(device, dtype):
        for r in rows:
            ref_hidden = ref_model.model(input_ids=r.input_ids, attention_mask=r.attention_mask).last_hidden_state
            flat = ref_hidden.reshape(-1, ref_hidden.shape[-1]).index_select(0, r.policy_index)  # (N, H)
            r.ref_logprobs, _ = ops.token_logprobs(flat, lm_head_weight(ref_model), r.policy_targets, temperature)
