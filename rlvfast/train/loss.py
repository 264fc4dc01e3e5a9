"""The math of one RL^V update, as small pure functions: advantages, per-token weights, rows, loss.

    J = J_RL + lambda * J_verify            (RL^V, arXiv 2505.04842)

One forward pass per sample over `[prompt, solution, verify prompt]` gives both parts: the
hidden states at the positions that predict the solution tokens (the sampled ids, the final
EOS included) feed the clipped policy loss with the sampler's old log-probs, and the hidden
state at the last verify-prompt position feeds the verifier loss -log P(label), label "Yes"
when the reward was 1 (>= 0.5 for a custom reward) and "No" otherwise. Log-probs come from
`rlvfast.ops` on gathered hidden-state rows, so the full [B, T, V] logits never exist.

By causality the hidden state at the last solution position does not depend on what comes
after it, so the EOS the sampler drew there is still the policy target, although the next
input token is the first verify token (the verifier sees the solution without its EOS:
the row is `rlvfast.sampler.verification_row`, the one the sampler verifies in its cache).

Aggregation (how per-token losses are summed; normalized over the WHOLE step's batch, so
splitting it into micro-batches does not change the gradient):
- token-mean: every valid token weighs 1 / (number of valid tokens in the batch)  (TRL "dapo",
  verl "token-mean");
- seq-mean: each sequence's tokens weigh 1 / (its length * number of valid sequences)  (TRL
  "grpo", verl "seq-mean-token-mean");
- constant: 1 / (max_new_tokens * number of valid sequences)  (Dr.GRPO; TRL "dr_grpo", verl
  "seq-mean-token-sum-norm").
Samples whose reward is None get weight 0 and no verifier label.

Policy-loss variants (LossConfig.loss_type, rlvfast.ops.reference.clipped_token_loss): ppo (the
clipped token ratio), gspo (the clipped sequence ratio, segments = the rows' samples), cispo (the
detached capped weight times the log-prob); delta caps the unclipped ratio (TRL's two-sided clip).
Rollout correction (LossConfig.rollout_correction = cap): each token's weight times
min(exp(lp_train_old - lp_sampler), cap), and the ratio taken against lp_train_old, the trainer's
log-probs before the update (RowBatch.train_old_logprobs, or the detached current ones: the first
PPO epoch); the sampler/trainer mismatch comes back in LossOutput.

Not here: sampling, grading, the optimizer and the loop (`rlvfast.train`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlvfast import ops
from rlvfast.ops.reference import LOSS_TYPES, clipped_token_loss, importance_ratio
from rlvfast.sampler import verification_row

GROUP_ALGOS = ("grpo", "rloo", "drgrpo")  # one group-relative advantage per sample (`compute_advantages`)
# vineppo: per-token advantages from Monte Carlo step values (`rlvfast.train.vine`)
ALGOS = GROUP_ALGOS + ("vineppo",)
LOSS_AGGS = ("token-mean", "seq-mean", "constant")
# Where the paper is silent we follow TRL/verl: GRPO and RLOO average over tokens
# (TRL's default "dapo" loss / verl's "token-mean"); Dr.GRPO uses its constant normalizer.
DEFAULT_LOSS_AGG = {"grpo": "token-mean", "rloo": "token-mean", "drgrpo": "constant", "vineppo": "token-mean"}
YES_THRESHOLD = 0.5  # a reward >= this is labeled "Yes" for the verifier


@dataclass(frozen=True, slots=True)
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    temperature: float = 1.0       # the sampler's: old log-probs are under this distribution
    verifier_coef: float = 1.0     # lambda; 0 = the base method (no verify tokens in the forward)
    kl_coef: float = 0.0           # > 0: k3 KL to a frozen reference model
    loss_type: str = "ppo"         # ppo | gspo | cispo (see the module docstring)
    delta: float | None = None     # TRL's two-sided clip: the unclipped ratio capped at delta; None = off
    rollout_correction: float | None = None  # cap of min(exp(lp_train_old - lp_sampler), cap); None = off

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"LossConfig.loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.delta is not None and not (self.delta > 1.0 + self.clip_high and self.loss_type != "cispo"):
            raise ValueError(f"LossConfig.delta={self.delta!r}: needs loss_type ppo or gspo (got "
                             f"{self.loss_type!r}) and delta > 1 + clip_high = {1.0 + self.clip_high}")
        if self.rollout_correction is not None and not self.rollout_correction >= 1.0:
            raise ValueError(f"LossConfig.rollout_correction (the cap) must be >= 1 or None, "
                             f"got {self.rollout_correction!r}")


# ----------------------------------------------------------------------------- advantages
def compute_advantages(rewards: Sequence[float | None], group_size: int, algo: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [B] float32, is_valid [B] bool) for rewards in consecutive groups.

    A None reward ("could not score") is replaced by the mean of its group's valid rewards
    before the group statistics (so it moves neither the mean nor, much, the std) and is
    masked out of every loss by `is_valid`.
    """
    if algo not in GROUP_ALGOS:
        raise ValueError(f"group-relative advantages: algo must be one of {GROUP_ALGOS}, got {algo!r} "
                         f"(vineppo's are per token: rlvfast.train.vine)")
    is_valid = torch.tensor([r is not None for r in rewards], dtype=torch.bool)  # (B,)
    filled = torch.tensor([0.0 if r is None else float(r) for r in rewards], dtype=torch.float32)  # (B,)
    groups, valid = filled.view(-1, group_size), is_valid.view(-1, group_size)  # (P, G)
    num_valid = valid.sum(dim=1, keepdim=True).clamp(min=1)  # (P, 1)
    group_mean = (groups * valid).sum(dim=1, keepdim=True) / num_valid  # (P, 1)
    filled = torch.where(valid, groups, group_mean).view(-1)  # (B,)
    advantages = ops.group_advantages(filled, group_size, algo)  # (B,)
    return torch.where(is_valid, advantages, torch.zeros_like(advantages)), is_valid


# ----------------------------------------------------------------------------- weights
def sequence_token_weights(lengths: torch.Tensor, is_valid: torch.Tensor, loss_agg: str,
                           max_new_tokens: int) -> torch.Tensor:
    """The weight of each token of each sequence, [B] (the same for all its tokens)."""
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")
    lengths = lengths.to(torch.float32)  # (B,)
    valid = is_valid.to(torch.float32)  # (B,)
    num_seqs = valid.sum().clamp(min=1.0)
    if loss_agg == "token-mean":
        weights = valid / (lengths * valid).sum().clamp(min=1.0)
    elif loss_agg == "seq-mean":
        weights = valid / (lengths.clamp(min=1.0) * num_seqs)
    else:
        weights = valid / (float(max_new_tokens) * num_seqs)
    return weights  # (B,)


VERIFIER_AGGS = ("mean", "balanced")


def verifier_label_weights(is_valid: torch.Tensor, is_yes: torch.Tensor | None = None) -> torch.Tensor:
    """Weights of the verifier's labels, summing to 1 over the labeled samples (0 elsewhere). [B]
    Without `is_yes`: the mean, 1 / (number of labeled samples). With `is_yes` (B,) bool:
    class-balanced, the "Yes" labels share half of the weight and the "No" labels the other
    half (all of it when the batch holds one class), so P("Yes") is fit as if right and wrong
    were equally likely and >= 0.5 is the threshold balanced accuracy asks for."""
    valid = is_valid.to(torch.float32)  # (B,)
    if is_yes is None:
        return valid / valid.sum().clamp(min=1.0)
    yes = valid * is_yes.to(torch.float32)  # (B,)
    no = valid - yes  # (B,)
    num_classes = float(yes.sum() > 0) + float(no.sum() > 0)
    return (yes / yes.sum().clamp(min=1.0) + no / no.sum().clamp(min=1.0)) / max(num_classes, 1.0)


def verifier_labels(rewards: Sequence[float | None], yes_id: int, no_id: int) -> list[int]:
    return [yes_id if r is not None and r >= YES_THRESHOLD else no_id for r in rewards]


# ----------------------------------------------------------------------------- rows
@dataclass(slots=True)
class Sample:
    """One rollout as the loss needs it (token ids exactly as sampled)."""
    prompt_ids: list[int]
    completion_ids: list[int]      # every sampled id, a final EOS included
    old_logprobs: torch.Tensor     # [len(completion_ids)] under the sampling distribution
    advantage: float | torch.Tensor  # one for every token, or [len(completion_ids)] per token (VinePPO)
    token_weight: float            # from sequence_token_weights
    label_id: int                  # "Yes" or "No" token id
    label_weight: float            # from verifier_label_weights (0: no label)


@dataclass(slots=True)
class RowBatch:
    """A right-padded micro-batch and the flat positions of its policy and verifier rows."""
    input_ids: torch.Tensor        # (B, T)
    attention_mask: torch.Tensor   # (B, T)
    policy_index: torch.Tensor     # (N,) flat index into B*T of positions predicting solution tokens
    policy_targets: torch.Tensor   # (N,)
    old_logprobs: torch.Tensor     # (N,)
    advantages: torch.Tensor       # (N,)
    policy_weights: torch.Tensor   # (N,)
    sample_of_token: torch.Tensor  # (N,) which row each policy token belongs to
    verifier_index: torch.Tensor   # (B,) flat index of the last verify-prompt position
    verifier_targets: torch.Tensor  # (B,)
    verifier_weights: torch.Tensor  # (B,)
    ref_logprobs: torch.Tensor | None = None  # (N,) under the frozen reference model (KL only)
    # (N,) the trainer's log-probs before this update (rollout correction; None: the current ones,
    # right in the first PPO epoch only)
    train_old_logprobs: torch.Tensor | None = None

    def to(self, device: torch.device) -> RowBatch:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self


def build_rows(samples: Sequence[Sample], verify_ids: Sequence[int], eos_ids: Sequence[int],
               pad_id: int, with_verifier: bool = True, dtype: torch.dtype = torch.float32) -> RowBatch:
    """Rows `[prompt, solution (no final EOS), verify ids]` (just `[prompt, completion]` when
    `with_verifier` is False, i.e. lambda = 0: the base method's forward exactly). `dtype`:
    of the per-token old log-probs, advantages and weights (float32; float64 in tests)."""
    eos = frozenset(eos_ids)
    rows, policy_index, targets, old, adv, weights, owner = [], [], [], [], [], [], []
    verifier_index, verifier_targets, verifier_weights = [], [], []
    for s in samples:
        completion = list(s.completion_ids)
        row = verification_row(s.prompt_ids, completion, eos, verify_ids) if with_verifier else s.prompt_ids + completion
        rows.append(row)
        first = len(s.prompt_ids) - 1  # the position predicting the first sampled token
        policy_index.append((len(rows) - 1, first, len(completion)))
        targets += completion
        old.append(s.old_logprobs.to(dtype))
        adv += _token_advantages(s, len(completion))
        weights += [s.token_weight] * len(completion)
        owner += [len(rows) - 1] * len(completion)
        verifier_index.append((len(rows) - 1, len(row) - 1))
        verifier_targets.append(s.label_id)
        verifier_weights.append(s.label_weight if with_verifier else 0.0)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, :len(row)] = 1
    flat = torch.cat([torch.arange(b * width + first, b * width + first + n) for b, first, n in policy_index])
    return RowBatch(
        input_ids=input_ids, attention_mask=attention_mask, policy_index=flat,
        policy_targets=torch.tensor(targets, dtype=torch.long), old_logprobs=torch.cat(old),
        advantages=torch.tensor(adv, dtype=dtype), policy_weights=torch.tensor(weights, dtype=dtype),
        sample_of_token=torch.tensor(owner, dtype=torch.long),
        verifier_index=torch.tensor([b * width + t for b, t in verifier_index], dtype=torch.long),
        verifier_targets=torch.tensor(verifier_targets, dtype=torch.long),
        verifier_weights=torch.tensor(verifier_weights, dtype=dtype))


def _token_advantages(sample: Sample, num_tokens: int) -> list[float]:
    """A sample's advantage for each of its `num_tokens` completion tokens."""
    if not isinstance(sample.advantage, torch.Tensor):
        return [sample.advantage] * num_tokens
    if sample.advantage.shape != (num_tokens,):
        raise ValueError(f"per-token advantages of shape {tuple(sample.advantage.shape)} for a completion of "
                         f"{num_tokens} tokens; expected ({num_tokens},)")
    return sample.advantage.tolist()


# ----------------------------------------------------------------------------- loss
@dataclass(slots=True)
class LossOutput:
    loss: torch.Tensor            # scalar with grad: policy + kl_coef * kl + verifier_coef * verifier
    policy_loss: torch.Tensor     # detached scalars below
    verifier_loss: torch.Tensor
    kl: torch.Tensor
    logprobs: torch.Tensor        # (N,) detached log-probs of the solution tokens
    num_clipped: torch.Tensor     # number of tokens whose clipped term is active (cispo: weight capped)
    # sampler/trainer mismatch over the weighted tokens, |lp_train_old - lp_sampler| (lp_train_old: see
    # RowBatch.train_old_logprobs): its sum and max, and the tokens whose correction weight hit the cap
    rollout_gap_sum: torch.Tensor
    rollout_gap_max: torch.Tensor
    num_capped: torch.Tensor


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref): exp(ref - lp) - (ref - lp) - 1 (>= 0)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def clipped_mask(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 clip_low: float, clip_high: float, loss_type: str = "ppo",
                 segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens whose clipped term is active (TRL's clip_ratio/region); cispo: whose weight is capped."""
    ratio = importance_ratio(logprobs, old_logprobs, loss_type, segment_ids)
    if loss_type == "cispo":
        return ratio > 1.0 + clip_high
    return ((ratio < 1.0 - clip_low) & (advantages < 0)) | ((ratio > 1.0 + clip_high) & (advantages > 0))


def rollout_weights(train_old: torch.Tensor, sampler: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights min(exp(train_old - sampler), cap) [N] and where they hit the cap [N]."""
    ratio = torch.exp(train_old - sampler)  # (N,)
    return torch.clamp(ratio, max=cap), ratio > cap


@dataclass(slots=True)
class _PolicyInputs:
    """What the policy loss sees after the rollout correction (old log-probs, weights), and the mismatch."""
    old_logprobs: torch.Tensor  # (N,)
    weights: torch.Tensor  # (N,)
    gap: torch.Tensor  # (N,) |lp_train_old - lp_sampler|
    is_capped: torch.Tensor  # (N,) bool


def _policy_inputs(logprobs: torch.Tensor, batch: RowBatch, config: LossConfig) -> _PolicyInputs:
    train_old = batch.train_old_logprobs if batch.train_old_logprobs is not None else logprobs.detach()
    train_old = train_old.to(batch.old_logprobs.dtype)
    gap = (train_old - batch.old_logprobs).abs()  # (N,)
    if config.rollout_correction is None:
        return _PolicyInputs(batch.old_logprobs, batch.policy_weights, gap, torch.zeros_like(gap, dtype=torch.bool))
    correction, is_capped = rollout_weights(train_old, batch.old_logprobs, config.rollout_correction)
    return _PolicyInputs(train_old, batch.policy_weights * correction, gap, is_capped)


def rlv_loss(hidden: torch.Tensor, lm_weight: torch.Tensor, batch: RowBatch, config: LossConfig) -> LossOutput:
    """The unified RL^V loss from the final hidden states of one forward pass.

    hidden: (B, T, H) last hidden states (after the final norm); lm_weight: (V, H).
    """
    flat = hidden.reshape(-1, hidden.shape[-1])  # (B*T, H)
    policy_hidden = flat.index_select(0, batch.policy_index)  # (N, H)
    variant = dict(loss_type=config.loss_type, delta=config.delta, segment_ids=batch.sample_of_token)
    if config.kl_coef > 0 or config.rollout_correction is not None:  # log-probs needed before the loss
        logprobs, _ = ops.token_logprobs(policy_hidden, lm_weight, batch.policy_targets, config.temperature)  # (N,)
        inputs = _policy_inputs(logprobs, batch, config)
        per_token = clipped_token_loss(logprobs, inputs.old_logprobs, batch.advantages,
                                       config.clip_low, config.clip_high, **variant)  # (N,)
        policy = (inputs.weights * per_token).sum()
        kl = (batch.policy_weights * k3_kl(logprobs, batch.ref_logprobs)).sum() if config.kl_coef > 0 \
            else torch.zeros((), dtype=policy.dtype, device=policy.device)
        loss = policy + config.kl_coef * kl
        logprobs = logprobs.detach()
    else:
        policy, logprobs = ops.policy_loss(policy_hidden, lm_weight, batch.policy_targets, batch.old_logprobs,
                                           batch.advantages, batch.policy_weights, config.clip_low,
                                           config.clip_high, config.temperature, **variant)
        inputs = _policy_inputs(logprobs, batch, config)
        kl = torch.zeros((), dtype=policy.dtype, device=policy.device)
        loss = policy
    if config.verifier_coef > 0:
        verifier_hidden = flat.index_select(0, batch.verifier_index)  # (B, H)
        label_logprobs, _ = ops.token_logprobs(verifier_hidden, lm_weight, batch.verifier_targets, 1.0)  # (B,)
        verifier = -(batch.verifier_weights * label_logprobs).sum()
        loss = loss + config.verifier_coef * verifier
    else:
        verifier = torch.zeros((), dtype=policy.dtype, device=policy.device)
    is_counted = batch.policy_weights > 0  # (N,)
    is_clipped = clipped_mask(logprobs, inputs.old_logprobs, batch.advantages, config.clip_low, config.clip_high,
                              config.loss_type, batch.sample_of_token)
    gap = torch.where(is_counted, inputs.gap, torch.zeros_like(inputs.gap))  # (N,)
    return LossOutput(loss=loss, policy_loss=policy.detach(), verifier_loss=verifier.detach(), kl=kl.detach(),
                      logprobs=logprobs, num_clipped=(is_clipped & is_counted).sum(),
                      rollout_gap_sum=gap.sum(), rollout_gap_max=gap.max() if gap.numel() else gap.sum(),
                      num_capped=(inputs.is_capped & is_counted).sum())
