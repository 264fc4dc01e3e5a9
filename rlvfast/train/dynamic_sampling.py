"""`--dynamic-sampling` (DAPO, arXiv 2503.14476; verl `algorithm.filter_groups`): keep only groups
whose rewards vary, drawing more problems until the step holds `prompts_per_step` of them.

A group whose valid rewards are all equal (all right, all wrong, or fewer than two valid rewards)
has zero group-relative advantage everywhere: it carries no policy gradient but still dilutes
the token-mean normalizer. `fill` takes a step's graded first round and, while fewer than
`prompts_per_step` groups are useful and fewer than `max_sampling_rounds` rounds were sampled
(verl's `max_num_gen_batches`, the first round included), samples and grades another round of
`prompts_per_step` problems (`problems_for_round`, `round_seed`: functions of the seed, the step
and the round only, so a resumed run draws the same). The policy term then takes the first
`prompts_per_step` useful groups in draw order (fewer when the rounds ran out: the metrics say
so); every other sampled group stays in the update as verifier-only rows (token weight 0), its
Yes/No labels weighed with the rest by the balanced rule (`rollouts.to_samples` with `is_policy`).

Under torchrun every rank samples its share of each round's problems (`distributed.local_slice`,
whole groups; the sampler's streams are keyed by prompt, so the samples are one process's). After
each round the ranks gather the useful flags of every group, in the one-process order (round by
round, rank by rank within a round), so all of them draw the same number of rounds (each one a
`full_weights` collective) and take the same policy groups as one process; `is_policy` is then
given in the order of the gathered batch (rank by rank, each rank's rounds in order).

Not here: the loss weights themselves (`rlvfast.train.rollouts.to_samples`), sampling one round
(the Sampler), grading (`rollouts.score_rollouts`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from rlvfast.sampler import SamplingParams, format_prompt
from rlvfast.tasks.problems import Problem
from rlvfast.train import distributed
from rlvfast.train.rollouts import problems_for_step, score_rollouts, step_seed


@dataclass(slots=True)
class Rollouts:
    """A step's problems, prompts, sampler outputs (one per problem, `group_size` completions each)
    and their rewards, in draw order (under torchrun: this rank's share of each round); `is_policy`
    per completion of the whole step (None: every one) and the dynamic/* metrics once `fill` has run."""
    problems: list[Problem]
    prompts: list[str]
    outputs: list
    rewards: list[float | None]
    num_timeouts: int = 0
    num_errors: int = 0
    is_policy: list[bool] | None = None
    metrics: dict = field(default_factory=dict)

    def extend(self, other: Rollouts) -> None:
        self.problems += other.problems
        self.prompts += other.prompts
        self.outputs += other.outputs
        self.rewards += other.rewards
        self.num_timeouts += other.num_timeouts
        self.num_errors += other.num_errors


def is_useful(rewards: list[float | None]) -> bool:
    """A group carries a policy gradient: at least two different valid rewards."""
    return len({r for r in rewards if r is not None}) > 1


def useful_groups(rewards: list[float | None], group_size: int) -> list[bool]:
    """`is_useful` of each consecutive group of `group_size` rewards."""
    return [is_useful(rewards[i:i + group_size]) for i in range(0, len(rewards), group_size)]


def problems_for_round(problems: list[Problem], step: int, round_index: int, num: int, seed: int) -> list[Problem]:
    """The problems of round `round_index` of a step: round 0 is the step's batch
    (`problems_for_step`); round r >= 1 reads the same position of an epoch-wise shuffled stream
    of its own (keyed by the seed and r), so the extra draws depend on (seed, step, round) only."""
    return problems_for_step(problems, step, num, seed if round_index == 0 else f"{seed}:round{round_index}")


def round_seed(seed: int, step: int, round_index: int) -> int:
    """The sampling seed of a round: round 0's is the step's (`step_seed`)."""
    return (step_seed(seed, step) + round_index * 104_729) % (2**31 - 1)


def _sample_round(run, step: int, round_index: int) -> Rollouts:
    """Samples and grades this rank's share of round `round_index` >= 1 of a step (the first round
    is `rl_step`'s)."""
    config = run.config
    problems, _ = distributed.local_slice(
        run.world, problems_for_round(run.problems, step, round_index, config.prompts_per_step, config.seed))
    prompts = [format_prompt(run.tokenizer, p.problem) for p in problems]
    params = SamplingParams(n=config.group_size, max_tokens=config.max_new_tokens,
                            temperature=config.temperature, seed=round_seed(config.seed, step, round_index))
    with distributed.full_weights(run.model):
        outputs = run.sampler.generate(prompts, params, score=config.verifier_coef == 0)
    rewards, num_timeouts, num_errors = score_rollouts(outputs, problems, prompts, run.grader, run.reward_fn)
    return Rollouts(problems, prompts, outputs, rewards, num_timeouts, num_errors)


def fill(run, first: Rollouts, step: int) -> Rollouts:
    """`first` (the step's graded round 0, extended in place) with more rounds until `prompts_per_step` groups
    are useful or `max_sampling_rounds` rounds are sampled; `is_policy` marks the completions of
    the first `prompts_per_step` useful groups (in the gathered batch's order under torchrun),
    `metrics` the dynamic/* columns."""
    config, world = run.config, run.world
    if not run.problems:
        raise ValueError("dynamic sampling needs the training problems in Run.problems to draw more from")
    t0 = time.perf_counter()
    rolled, num_rounds = first, 1
    is_useful_group = _gathered_useful(world, first.rewards, config.group_size)
    while num_rounds < config.max_sampling_rounds and sum(is_useful_group) < config.prompts_per_step:
        more = _sample_round(run, step, round_index=num_rounds)
        rolled.extend(more)
        is_useful_group += _gathered_useful(world, more.rewards, config.group_size)
        num_rounds += 1
    is_policy_group, num_taken = [], 0
    for useful in is_useful_group:  # the first prompts_per_step useful groups, in draw order
        is_policy_group.append(useful and num_taken < config.prompts_per_step)
        num_taken += is_policy_group[-1]
    rank_major = by_rank(is_policy_group, world.size, num_rounds)
    rolled.is_policy = [g for g in rank_major for _ in range(config.group_size)]
    rolled.metrics = {"dynamic/rounds": num_rounds, "dynamic/useful_groups": num_taken,
                      "dynamic/filtered_frac": is_useful_group.count(False) / len(is_useful_group),
                      "time/dynamic_sampling": time.perf_counter() - t0}
    return rolled


def _gathered_useful(world: distributed.World, rewards: list[float | None], group_size: int) -> list[bool]:
    """`useful_groups` of a round's groups on every rank, in rank order: the one-process order."""
    return world.gather(useful_groups(rewards, group_size), "gathering the useful groups")


def by_rank(flags: list, num_ranks: int, num_rounds: int) -> list:
    """Per-group `flags` in draw order (round by round; within a round, rank by rank, each rank's
    share of whole groups) reordered rank by rank (each rank's rounds in order): the order of
    the step's batch gathered over the ranks. One rank: `flags` as they are."""
    per_round = len(flags) // num_rounds
    share = per_round // num_ranks
    return [flags[r * per_round + q * share + i] for q in range(num_ranks) for r in range(num_rounds)
            for i in range(share)]
