"""The end-of-run table of `python -m rlvfast.train`: which held-out problems it is measured
on (`eval_problems`: `eval_problems` synthetic problems per split of `eval_splits`) and how
the trainer's settings become one evaluation (`evaluate`; `evaluate_pools` also returns the
problems' samples as Pools). Under torchrun the evaluation is split: each rank samples and
grades its contiguous share of the problems, the Pools are gathered on every rank and the
summary is computed once from all of them, in problem order: the one-process summary.

The evaluation itself (sample, grade, vote, verifier metrics) is `rlvfast.eval.samples.evaluate`,
the path `python -m rlvfast.eval` runs too; the printed table is `rlvfast.eval.report.format_table`
(re-exported here with its note and number format).
"""
from __future__ import annotations

from rlvfast.eval.report import BEST_OF_N_NOTE, format_table
from rlvfast.tasks.problems import Problem
from rlvfast.train import distributed
from rlvfast.train.config import TrainConfig

__all__ = ["BEST_OF_N_NOTE", "eval_problems", "evaluate", "evaluate_pools", "format_table"]

NUM_TRIALS = 100  # random subsets per N for the votes (all of them when fewer exist)


def evaluate(sampler, problems: list[Problem], config: TrainConfig, grader, seed: int,
             num_samples: int | None = None, world: distributed.World = distributed.SINGLE) -> dict:
    """pass@1, verifier metrics and voting at N = 1, 2, 4, ... eval_samples (or `num_samples`)
    on held-out problems, sampled at the training temperature and length; `seed` seeds both
    the samples and the voting subsets. Under torchrun (`world`) every rank calls it: see
    `evaluate_pools`."""
    return evaluate_pools(sampler, problems, config, grader, seed, num_samples, world)[0]


def evaluate_pools(sampler, problems: list[Problem], config: TrainConfig, grader, seed: int,
                   num_samples: int | None = None, world: distributed.World = distributed.SINGLE) -> tuple[dict, list]:
    """`evaluate`'s summary and each problem's `rlvfast.eval.scaling.Pool` (the comparison's bootstrap).

    Under torchrun this rank samples and grades its contiguous share of `problems`
    (`distributed.local_slice`: the shares differ by one problem at most, and may be empty),
    and every rank makes the summary from all the ranks' Pools, gathered in problem order. It is
    the one-process summary: a sample's random stream is keyed by the seed and its prompt (the
    held-out problems are distinct: no prompt has a second occurrence) and the voting subsets
    by the seed and the problem id, so the sampled tokens are the same; the verifier's scores
    come from another batch shape (~1e-6 apart). Sampling runs no collective (inside
    `distributed.full_weights` no FSDP2 unit gathers or reshards), so the shares may differ."""
    from rlvfast.eval.samples import pool_from_records, sample_and_grade, summarize
    from rlvfast.sampler import SamplingParams

    params = SamplingParams(n=num_samples or config.eval_samples, max_tokens=config.max_new_tokens,
                            temperature=config.temperature, seed=seed)
    share, _ = distributed.local_slice(world, problems)
    own = sample_and_grade(sampler, grader, share, params).by_problem() if share else []  # []: more ranks than problems
    pools = world.gather([pool_from_records(records) for records in own], "gathering the evaluation")
    return summarize(pools, num_trials=NUM_TRIALS, seed=seed), pools


def eval_problems(config: TrainConfig) -> dict[str, list[Problem]]:
    """split -> its `config.eval_problems` held-out synthetic problems (seed 0: the same every run)."""
    from rlvfast.tasks.synthetic import make_problems

    return {split: make_problems(config.eval_problems, split, seed=0) for split in config.eval_splits}
