"""A step's rollouts, from problems to what the update and the log need.

`problems_for_step` and `step_seed` say what a step samples (both functions of the seed and the
step only, so a resumed run samples the same); `score_rollouts` grades the completions (the
time-limited grader, or a custom reward function whose output is checked here); `to_samples`
turns them into the loss's `Sample`s (advantages, token and label weights from
`rlvfast.train.loss`, normalized over the whole step's batch: a `WholeBatch` when the batch is
split over ranks); `vine_advantages` is `--algo vineppo`'s Monte Carlo phase (continue each
rollout from its step boundaries, grade the continued solutions with `score_rollouts`, per-token
advantages by `rlvfast.train.vine`); `rollout_metrics` and `verifier_step_metrics` are their
metrics.jsonl columns. Not here: sampling itself (the Sampler), the loss math
(`rlvfast.train.loss`), the update.
"""
from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from rlvfast.cli import UserError
from rlvfast.eval.scaling import verifier_metrics
from rlvfast.sampler import RequestOutput, SamplingParams
from rlvfast.tasks.problems import Problem
from rlvfast.train import vine
from rlvfast.train.config import TrainConfig
from rlvfast.train.loss import (GROUP_ALGOS, YES_THRESHOLD, Sample, compute_advantages, sequence_token_weights,
                                verifier_label_weights, verifier_labels)


def problems_for_step(problems: list[Problem], step: int, num: int, seed: int | str) -> list[Problem]:
    """Epoch-wise shuffled stream: position step*num onwards; the order depends only on the seed
    (a string seed: another stream, as `dynamic_sampling.problems_for_round` draws)."""
    out = []
    for position in range(step * num, (step + 1) * num):
        epoch, index = divmod(position, len(problems))
        order = random.Random(f"{seed}:{epoch}").sample(range(len(problems)), len(problems))
        out.append(problems[order[index]])
    return out


def step_seed(seed: int, step: int) -> int:
    """The sampling seed of a step."""
    return (seed * 1_000_003 + step * 7919 + 17) % (2**31 - 1)


def score_rollouts(outputs, problems: list[Problem], prompts: list[str], grader, reward_fn):
    """(rewards list[float | None], num_timeouts, num_errors) for every completion in order."""
    completions = [c for o in outputs for c in o.completions]
    per_sample = [p for p, o in zip(problems, outputs) for _ in o.completions]
    if reward_fn is None:
        results = grader.grade_batch([c.text for c in completions], [p.answer for p in per_sample])
        return ([1.0 if r.correct else 0.0 for r in results], sum(r.status == "timeout" for r in results),
                sum(r.status == "error" for r in results))
    columns = {"answer": [p.answer for p in per_sample], "problem": [p.problem for p in per_sample],
               "id": [p.id for p in per_sample]}
    rewards = reward_fn(prompts=[pr for pr, o in zip(prompts, outputs) for _ in o.completions],
                        completions=[c.text for c in completions],
                        completion_ids=[list(c.token_ids) for c in completions], **columns)
    return _checked_rewards(rewards, len(completions), getattr(reward_fn, "__qualname__", repr(reward_fn))), 0, 0


def _checked_rewards(rewards, num_completions: int, name: str) -> list[float | None]:
    """A custom reward function's output as floats, or a UserError naming the bad value."""
    if len(rewards) != num_completions:
        raise UserError(f"--reward {name} returned {len(rewards)} rewards for {num_completions} completions")
    out = []
    for i, r in enumerate(rewards):
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r)):
            raise UserError(f"--reward {name} returned {r!r} for completion {i}; expected a finite float or None")
        out.append(None if r is None else float(r))
    if all(r is None for r in out):  # the same text each time: Python shows it once
        warnings.warn(f"--reward {name} returned None for every completion of a step: that step trains "
                      f"nothing (no policy gradient, no verifier label)", stacklevel=3)
    return out


@dataclass(frozen=True, slots=True)
class WholeBatch:
    """The whole step's rewards and completion lengths over all ranks (rank order: the one-process
    batch), and where this rank's completions start in it: the loss weights are normalized over
    the whole batch, so each rank's samples weigh what they weigh in one process."""
    rewards: list[float | None]
    lengths: list[int]
    start: int


def to_samples(outputs, rewards: list[float | None], config: TrainConfig, yes_id: int, no_id: int,
               whole: WholeBatch | None = None, token_advantages: list[torch.Tensor] | None = None,
               is_policy: list[bool] | None = None) -> list[Sample]:
    """One `Sample` per completion, in order: its ids and old log-probs as sampled, its advantage
    (group-relative; --algo vineppo: `token_advantages`, one tensor per completion, from
    `vine_advantages`), its token weight (`config.loss_agg`) and its verifier label and weight,
    normalized over `whole` (default: these completions are the whole batch). `is_policy` (per
    completion of `whole`; --dynamic-sampling): the others are verifier-only rows, token weight 0,
    and the token weights are normalized over the policy rows alone; the labels' over every row."""
    completions = [c for o in outputs for c in o.completions]
    if whole is None:
        whole = WholeBatch(rewards, [len(c.token_ids) for c in completions], 0)
    if config.algo in GROUP_ALGOS:
        group, is_valid = compute_advantages(whole.rewards, config.group_size, config.algo)  # (W,), (W,)
        advantages = [float(a) for a in group[whole.start:whole.start + len(completions)]]
    elif token_advantages is None or len(token_advantages) != len(completions):
        raise ValueError(f"to_samples: --algo {config.algo} needs per-token advantages for each of the "
                         f"{len(completions)} completions (vine_advantages), got {None if token_advantages is None else len(token_advantages)}")
    else:
        advantages, is_valid = token_advantages, torch.tensor([r is not None for r in whole.rewards])  # (W,)
    lengths = torch.tensor(whole.lengths)  # (W,)
    is_policy_row = is_valid if is_policy is None else is_valid & torch.tensor(is_policy, dtype=torch.bool)  # (W,)
    token_weights = sequence_token_weights(lengths, is_policy_row, config.loss_agg, config.max_new_tokens)  # (W,)
    labels = verifier_labels(whole.rewards, yes_id, no_id)
    is_yes = torch.tensor([label == yes_id for label in labels]) if config.verifier_agg == "balanced" else None  # (W,)
    label_weights = verifier_label_weights(is_valid, is_yes)  # (W,)
    pairs = [(o, c) for o in outputs for c in o.completions]
    at = whole.start  # this rank's first completion in the whole batch
    return [Sample(list(o.prompt_token_ids), list(c.token_ids), c.logprobs, advantages[k],
                   float(token_weights[at + k]), labels[at + k], float(label_weights[at + k]))
            for k, (o, c) in enumerate(pairs)]


# ----------------------------------------------------------------------------- VinePPO
@dataclass(frozen=True, slots=True)
class StepRollouts:
    """A step's rollouts as sampled and graded: what `vine_advantages` continues."""
    outputs: list                # one RequestOutput per problem
    problems: list[Problem]
    prompts: list[str]
    rewards: list[float | None]  # one per completion, in order
    seed: int                    # the rollouts' sampling seed (`step_seed`)


Grade = Callable[[list, list[Problem], list[str]], tuple[list[float | None], int, int]]  # `score_rollouts`'s


def vine_advantages(sampler, rollouts: StepRollouts, grade: Grade,
                    config: TrainConfig) -> tuple[list[torch.Tensor], list[list[float] | None], dict]:
    """VinePPO's per-token advantages of every completion, in order ((len(token_ids),) float32; zeros
    for a reward of None), the state values V(s_0) .. V(s_T) of each (None for a reward of None;
    their metrics: `vine_value_metrics`), and the other metrics: the states continued, the
    grader's time-outs and errors on the continued solutions (`VINE_COUNTS`), time/mc_sampling
    (the continuations) and time/mc_grading.

    States: s_0 and the ends of a rollout's steps (`vine.step_boundaries`, --vine-max-steps),
    each distinct state once (`vine.unique_states`); --vine-samples continuations from each,
    sampled with the rollouts' temperature and seed + 1 (with the rollouts' own seed the
    continuations from s_0 would replay the rollouts), each within the rollouts' token budget.
    A continuation's reward is `grade`'s (the run's grader or reward function) on the whole
    solution: the state's solution text, then the continuation's. A state whose continuations all
    got a reward of None takes as value the reward of the rollout it was continued from.
    """
    tokenizer = sampler.tokenizer
    completions = [c for o in rollouts.outputs for c in o.completions]
    owner = [p for p, o in enumerate(rollouts.outputs) for _ in o.completions]  # the problem of each completion
    texts = [vine.token_texts(tokenizer, c.token_ids) for c in completions]
    boundaries = [[] if r is None else vine.step_boundaries(t, config.vine_boundaries)
                  for t, r in zip(texts, rollouts.rewards)]
    prompt_ids = [list(rollouts.outputs[p].prompt_token_ids) for p in owner]
    kept, source = vine.unique_states(prompt_ids, [c.token_ids for c in completions], boundaries)
    t0 = time.perf_counter()
    params = SamplingParams(n=config.vine_samples, max_tokens=config.max_new_tokens,
                            temperature=config.temperature, seed=rollouts.seed + 1)
    continued = sampler.continue_from(prompt_ids, completions, kept, params, max_solution_tokens=config.max_new_tokens)
    t1 = time.perf_counter()
    states = [o for i, c in enumerate(completions)
              for o in _whole_solutions(tokenizer, rollouts.outputs[owner[i]], c, kept[i], continued[i])]
    state_owner = [owner[i] for i, bounds in enumerate(kept) for _ in bounds]  # the problem of each state
    rewards, num_timeouts, num_errors = grade(states, [rollouts.problems[p] for p in state_owner],
                                              [rollouts.prompts[p] for p in state_owner])
    t2 = time.perf_counter()
    state_rewards = _per_state(rewards, kept, rollouts.rewards, config.vine_samples)
    values = [None if r is None else vine.state_values([state_rewards[i][j] for i, j in source[k]], r,
                                                       len(vine.step_ends(texts[k])))
              for k, r in enumerate(rollouts.rewards)]
    advantages = [_token_advantages(t, v) for t, v in zip(texts, values)]
    metrics = {"vine/states": len(states), "vine/grader_timeouts": num_timeouts, "vine/grader_errors": num_errors,
               "time/mc_sampling": t1 - t0, "time/mc_grading": t2 - t1}
    return advantages, values, metrics


VINE_COUNTS = ("vine/states", "vine/grader_timeouts", "vine/grader_errors")  # `vine_advantages`' counts


def vine_value_metrics(values: list[list[float] | None]) -> dict[str, float]:
    """`vine.step_metrics` of the rollouts' state values (`vine_advantages`; None ones left out)."""
    valid = [v for v in values if v is not None]
    return vine.step_metrics(valid, [vine.step_advantages(v) for v in valid])


def _token_advantages(texts: list[str], values: list[float] | None) -> torch.Tensor:
    """A completion's per-token advantages from its state values (None: no reward, zeros). (len(texts),)"""
    if values is None:
        return torch.zeros(len(texts), dtype=torch.float32)
    return vine.token_advantages(vine.step_ends(texts), vine.step_advantages(values))


def _whole_solutions(tokenizer, output, completion, kept: list[int], continued: list) -> list[RequestOutput]:
    """One RequestOutput per state of a rollout, its completions the whole solutions: the state's
    sampled ids and text (decoded as the sampler decodes a solution), then the continuation's."""
    out = []
    for b, state in zip(kept, continued):
        ids = list(completion.token_ids[:b])
        text = tokenizer.decode(ids, skip_special_tokens=True)
        whole = [replace(c, text=text + c.text, token_ids=ids + list(c.token_ids)) for c in state.completions]
        out.append(RequestOutput(output.prompt, list(output.prompt_token_ids), whole))
    return out


def _per_state(rewards: list[float | None], kept: list[list[int]], rollout_rewards: list[float | None],
               num_samples: int) -> list[list[list[float]]]:
    """rewards (flat, `num_samples` per state in `kept` order) as [rollout][state] lists without
    the None ones; a state with none left gets its rollout's own reward (one-sample estimate)."""
    it = iter(rewards)
    out = []
    for bounds, own in zip(kept, rollout_rewards):
        per_state = [[r for r in (next(it) for _ in range(num_samples)) if r is not None] for _ in bounds]
        out.append([got or [own] for got in per_state])
    return out


def rollout_metrics(rewards: list[float | None], completions, group_size: int) -> dict:
    """Reward, its spread within groups, completion lengths, truncations, entropy, None rewards."""
    valid = torch.tensor([math.nan if r is None else r for r in rewards]).view(-1, group_size)  # (P, G)
    group_std = torch.tensor([g[~g.isnan()].std().item() if (~g.isnan()).sum() > 1 else 0.0 for g in valid])
    lengths = [len(c.token_ids) for c in completions]
    return {"reward": float(valid.nanmean()) if (~valid.isnan()).any() else None,
            "reward_std": float(group_std.mean()), "frac_reward_zero_std": float((group_std == 0).float().mean()),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/clipped_ratio": sum(c.finish_reason == "length" for c in completions) / len(completions),
            # the sampled-token estimate of the policy entropy (TRL computes it exactly from full logits)
            "entropy": -float(torch.cat([c.logprobs for c in completions]).mean()),
            "rewards/none": sum(r is None for r in rewards)}


def verifier_step_metrics(scores: list[float | None], rewards: list[float | None]) -> dict:
    """The verifier on the step's fresh samples, before the update: accuracy and balanced accuracy
    of P("Yes") >= 0.5 against the label the loss trains (reward >= YES_THRESHOLD), by
    `rlvfast.eval.scaling.verifier_metrics`. Samples without a reward or a score do not count;
    None when no sample counts (both) or when they hold one class only (balanced accuracy)."""
    pairs = [(s, r >= YES_THRESHOLD) for s, r in zip(scores, rewards) if r is not None and s is not None]
    result = verifier_metrics([s for s, _ in pairs], [label for _, label in pairs])
    return {"verifier/accuracy": result["accuracy"], "verifier/balanced_accuracy": result["balanced_accuracy"]}
