"""Plain PyTorch references of rlvfast's fused ops: the spec that tests and benchmarks import.

Readable and float64-capable; they materialize full logits [N, V] where the fused kernels
must not. No chunking, no custom autograd: gradients come from PyTorch's autograd. Inputs
are not validated here (rlvfast.ops does that once, in front of every backend).

Compute dtype: float64 when the inputs are float64, else float32 (bf16/fp16 inputs are
upcast before the matmul), so these double as the fp32 "plain PyTorch way" in benchmarks.
"""
from __future__ import annotations

import torch


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if all(t.dtype == torch.float64 for t in tensors) else torch.float32


def group_advantages(rewards: torch.Tensor, group_size: int, method: str = "grpo",
                     eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages for rewards [num_groups * group_size] in consecutive groups.

    grpo: (r - mean) / (std + eps) with the unbiased std; rloo: r_i - mean of the other
    G-1 rewards; drgrpo: r - mean. Groups of size 1 and all-equal groups give 0.
    """
    r = rewards.reshape(-1, group_size).to(torch.float64)  # (G, n)
    if group_size == 1:
        return torch.zeros_like(rewards)
    mean = r.mean(dim=1, keepdim=True)  # (G, 1)
    if method == "grpo":
        adv = (r - mean) / (r.std(dim=1, keepdim=True) + eps)
    elif method == "rloo":
        adv = r - (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    elif method == "drgrpo":
        adv = r - mean
    else:
        raise ValueError(f"unknown advantage method {method!r}")
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)  # (G, 1)
    adv = torch.where(all_equal, torch.zeros_like(adv), adv)
    return adv.reshape(-1).to(rewards.dtype)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    dtype = _compute_dtype(hidden, weight)
    return (hidden.to(dtype) @ weight.to(dtype).T) / temperature  # (N, V)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token under the lm head, and the log-sum-exp.

    hidden [N, H], weight [V, H], targets [N] int64 -> (logprobs [N], lse [N]), float32
    (float64 for float64 inputs). logits = hidden @ weight.T / temperature.
    """
    logits = _logits(hidden, weight, temperature)  # (N, V)
    lse = torch.logsumexp(logits, dim=-1)  # (N,)
    logprobs = logits.gather(1, targets.long().unsqueeze(1)).squeeze(1) - lse  # (N,)
    return logprobs, lse


LOSS_TYPES = ("ppo", "gspo", "cispo")


def segment_mean(values: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Each token's value replaced by the mean over its segment (sequence), differentiably. [N]

    segment_ids [N] int: the sequence index of each token (any order, ids in [0, S)).
    """
    ids = segment_ids.long()
    num_segments = int(ids.max()) + 1 if ids.numel() else 0
    sums = values.new_zeros(num_segments).index_add(0, ids, values)  # (S,)
    counts = torch.bincount(ids, minlength=num_segments).to(values.dtype)  # (S,)
    return (sums / counts.clamp(min=1))[ids]  # (N,)


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, loss_type: str = "ppo",
                     segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The importance ratio of each token. [N]

    ppo, cispo: the token ratio exp(lp - old). gspo (GSPO, arXiv 2507.18071; TRL
    importance_sampling_level="sequence"): the sequence ratio exp(mean_t(lp - old)) over each
    sequence's tokens, the same for all of them; its gradient reaches every token of the
    sequence through the mean (d s / d lp_t = s / |y|).
    """
    log_ratio = logprobs - old_logprobs  # (N,)
    if loss_type == "gspo":
        log_ratio = segment_mean(log_ratio, segment_ids)  # (N,) one value per sequence
    return torch.exp(log_ratio)


def clipped_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                       clip_low: float, clip_high: float, loss_type: str = "ppo", delta: float | None = None,
                       segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token loss of the policy-gradient family [N], r = importance_ratio(...):

    ppo/gspo: -min(min(r, delta) A, clip(r, 1 - clip_low, 1 + clip_high) A); delta (TRL's
        two-sided clip, arXiv 2503.14476 via TRL GRPOConfig.delta) caps the unclipped ratio,
        which only bites for A < 0 when delta > 1 + clip_high; None = no cap.
    cispo (MiniMax-M1, arXiv 2506.13585): -sg(min(r, 1 + clip_high)) A lp, the clipped
        importance weight detached, every token keeping its gradient.
    """
    ratio = importance_ratio(logprobs, old_logprobs, loss_type, segment_ids)  # (N,)
    if loss_type == "cispo":
        return -torch.clamp(ratio, max=1.0 + clip_high).detach() * advantages * logprobs  # (N,)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)  # (N,)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)  # (N,)
    return -torch.minimum(unclipped * advantages, clipped * advantages)  # (N,)


def policy_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                old_logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2,
                temperature: float = 1.0, loss_type: str = "ppo", delta: float | None = None,
                segment_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Policy-gradient loss sum_i weights_i * l_i (l: clipped_token_loss), and the detached log-probs.

    old_logprobs, advantages, weights: [N] (advantages already broadcast per token; weights
    carry the mask and any 1/num_tokens normalization); segment_ids [N]: the sequence of each
    token (gspo only). Gradients flow to hidden and weight.
    """
    logprobs, _ = token_logprobs(hidden, weight, targets, temperature)  # (N,)
    dtype = logprobs.dtype
    per_token = clipped_token_loss(logprobs, old_logprobs.detach().to(dtype), advantages.detach().to(dtype),
                                   clip_low, clip_high, loss_type, delta, segment_ids)  # (N,)
    loss = (weights.detach().to(dtype) * per_token).sum()
    return loss, logprobs.detach()


def verifier_scores(hidden: torch.Tensor, weight: torch.Tensor, yes_id: int, no_id: int,
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """P("Yes") and P("No") under the full-vocabulary softmax at the verification position.

    hidden [B, H], weight [V, H] -> (p_yes [B], p_no [B]), float32 (float64 for float64 inputs).
    """
    logits = _logits(hidden, weight, temperature)  # (B, V)
    lse = torch.logsumexp(logits, dim=-1)  # (B,)
    return torch.exp(logits[:, yes_id] - lse), torch.exp(logits[:, no_id] - lse)
