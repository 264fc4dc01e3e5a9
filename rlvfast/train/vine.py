"""VinePPO's step values and per-token advantages (Kazemnejad et al., 2024), as pure functions.

VinePPO cuts a sampled solution into reasoning steps, estimates the value of the state at each
step boundary (prompt + the solution so far) by the mean reward of K fresh continuations from
it, and credits every token of step t with A_t = V(s_{t+1}) - V(s_t), where the final state's
value is the rollout's own reward (reward 0 on every step but the last, no discount: the
paper's and McGill-NLP/VinePPO's `r_t + V(s_{t+1}) - V(s_t)`).

Steps (`step_ends`): for math, VinePPO splits at line breaks. A step ends after a token whose
text holds a line break, once the step holds non-blank text; so blank lines join the step that
follows them (VinePPO merges empty steps into the next one), and a blank tail (a last line
break, the EOS) joins the last step. VinePPO's own split puts the line break at the start of
the next step; here it ends its step, because a boundary must fall between tokens and a line
break is its own token or ends one (byte-level BPE: "\n", ".\n"), so the state after a step is
"...line\n", where the model begins a new line.

The cap (`step_boundaries(..., max_steps)`): the states continued from are s_0 (the prompt) and
the ends of the first max_steps - 1 steps, so at most max_steps boundaries per solution and
the first max_steps steps get their own advantage. Later states are not estimated: they take
the rollout's final reward as their value (its own outcome, a one-sample Monte Carlo estimate,
as VinePPO fills them from the end), so step max_steps - 1 gets R - V(s_{max_steps - 1}) and the
later steps 0.

Seeds: sample the continuations with a seed other than the rollouts' own; `continue_from`
keys a stream by its state's ids, so from s_0 (the prompt) the rollouts' seed replays the
rollouts themselves.

Not here: sampling the continuations (`rlvfast.sampler.Sampler.continue_from`), grading
them, the loss (`rlvfast.train.loss`), the training loop.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

LINE_BREAK = "\n"
VINE_SAMPLES = 9  # K, VinePPO's default (`num_mc_rollouts = 9` in its MATH configs)


def token_texts(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """Each token's own text (special tokens such as EOS decode to ""), for `step_ends`."""
    return [tokenizer.decode([t], skip_special_tokens=True) for t in token_ids]


def step_ends(texts: Sequence[str]) -> list[int]:
    """Token positions (exclusive) where each step of a solution ends; the last is len(texts).

    texts: the solution's tokens' texts (`token_texts`). A step ends after a token holding a
    line break once the step has non-blank text; a blank tail joins the last step (module doc).
    An empty solution is one empty step: [0].
    """
    ends, has_text = [], False
    for i, text in enumerate(texts):
        has_text = has_text or bool(text.strip())
        if LINE_BREAK in text and has_text:
            ends.append(i + 1)
            has_text = False
    if ends and not has_text:  # a blank tail (no text after the last end): part of the last step
        ends.pop()
    return ends + [len(texts)]


def step_boundaries(texts: Sequence[str], max_steps: int) -> list[int]:
    """Token positions of the states whose values are estimated by continuations: 0 (the
    prompt) and the ends of the first steps but the last, at most `max_steps` in all."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1 (boundaries per solution), got {max_steps!r}")
    return [0] + step_ends(texts)[:-1][:max_steps - 1]


def state_values(mc_rewards: Sequence[Sequence[float]], final_reward: float, num_steps: int) -> list[float]:
    """V(s_0) .. V(s_T), T = num_steps: the mean reward of the continuations from each estimated
    state (mc_rewards[t]: the K rewards from s_t, for t < len(mc_rewards)), then the final
    reward for every later state, s_T included (the final reward closes the last step)."""
    if not 1 <= len(mc_rewards) <= num_steps:
        raise ValueError(f"state_values: rewards for {len(mc_rewards)} states of a {num_steps}-step solution; "
                         f"expected 1 to {num_steps} (s_0 and the ends of steps but the last)")
    values = []
    for t, rewards in enumerate(mc_rewards):
        if len(rewards) == 0:
            raise ValueError(f"state_values: no continuation rewards for state s_{t}")
        values.append(sum(rewards) / len(rewards))
    return values + [float(final_reward)] * (num_steps + 1 - len(values))


def step_advantages(values: Sequence[float]) -> list[float]:
    """A_t = V(s_{t+1}) - V(s_t) for each step t (len(values) - 1 steps)."""
    return [after - before for before, after in zip(values[:-1], values[1:])]


def token_advantages(ends: Sequence[int], advantages: Sequence[float]) -> torch.Tensor:
    """Each token of step t (positions [ends[t-1], ends[t])) gets advantages[t] -> (ends[-1],) float32."""
    if len(ends) != len(advantages):
        raise ValueError(f"token_advantages: {len(ends)} steps but {len(advantages)} advantages")
    lengths = torch.tensor(ends).diff(prepend=torch.zeros(1, dtype=torch.long))  # (T,) tokens per step
    return torch.tensor(advantages, dtype=torch.float32).repeat_interleave(lengths)  # (ends[-1],)


def unique_states(prompt_ids: Sequence[Sequence[int]], token_ids: Sequence[Sequence[int]],
                  boundaries: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Drops repeated states before sampling continuations (s_0 is the same for all samples of a
    prompt; VinePPO deduplicates too): (the boundaries to continue from, and for every
    (rollout i, boundary j) the (i', j') in them whose state it equals)."""
    seen: dict[tuple[int, ...], tuple[int, int]] = {}
    kept: list[list[int]] = []
    source: list[list[tuple[int, int]]] = []
    for i, (prompt, ids, bounds) in enumerate(zip(prompt_ids, token_ids, boundaries)):
        kept.append([])
        source.append([])
        for b in bounds:
            state = tuple(prompt) + tuple(ids[:b])
            if state not in seen:
                seen[state] = (i, len(kept[i]))
                kept[i].append(b)
            source[i].append(seen[state])
    return kept, source


def step_metrics(values: Sequence[Sequence[float]], advantages: Sequence[Sequence[float]]) -> dict[str, float]:
    """metrics.jsonl entries over a batch of rollouts: `vine/value_step_<t>`, the mean V(s_t) per
    step index t (s_T included), `vine/zero_advantage_frac` (steps with A_t == 0) and
    `vine/steps_per_solution`."""
    out: dict[str, float] = {}
    for t in range(max((len(v) for v in values), default=0)):
        at_t = [v[t] for v in values if len(v) > t]
        out[f"vine/value_step_{t}"] = sum(at_t) / len(at_t)
    steps = [a for adv in advantages for a in adv]
    if steps:
        out["vine/zero_advantage_frac"] = sum(a == 0.0 for a in steps) / len(steps)
        out["vine/steps_per_solution"] = len(steps) / len(advantages)
    return out
