"""The one evaluation path: sample problems with a `Sampler`, grade with a `Grader`, keep
one record per sample, and turn a problem's records into a `Pool` for `rlvfast.eval.scaling`.

`python -m rlvfast.eval` (`rlvfast.eval.run`) and the trainer's end-of-run table
(`rlvfast.train.report`) both call `sample_and_grade` and `pool_from_records`; `evaluate`
is the short form the trainer's table reads (pass@1, verifier metrics, votes at N = 1..n;
`short_summary` makes it from `scaling` results, `summarize` from Pools, `evaluate_pools`
also returns the Pools).

A record is a plain dict, the line `rlvfast.eval` writes to OUT/samples.jsonl:
problem_id, sample (0..n-1), difficulty, gold, text, answer (the grader's extraction),
correct, grade_status, score (the verifier's P("Yes")), num_tokens, finish_reason; the eval
command may add judge_score/judge_text and budgets. Not here: the judge, length budgets and
files (`rlvfast.eval.run`, `rlvfast.eval.storage`), the metric math (`rlvfast.eval.scaling`).
"""
from __future__ import annotations

from dataclasses import dataclass

from rlvfast.eval.scaling import Budget, Pool, parallel_accuracy, verifier_metrics
from rlvfast.eval.voting import normalize_answer
from rlvfast.tasks.problems import Problem

VOTE_METHODS = ("majority", "best_of_n", "weighted")


@dataclass(slots=True)
class GradedBatch:
    """What `sample_and_grade` made: flat lists in problem-major order (problem i's n samples
    are entries i*n .. i*n+n-1)."""
    problems: list[Problem]
    prompts: list[str]
    completions: list  # rlvfast.sampler.Completion: token ids, budget scores (what a record leaves out)
    records: list[dict]
    n: int

    def by_problem(self) -> list[list[dict]]:
        """Each problem's n records."""
        return [self.records[i * self.n:(i + 1) * self.n] for i in range(len(self.problems))]


def difficulty_of(problem: Problem) -> str | None:
    """The synthetic split name, or "level N" for MATH; None when the data set has neither."""
    if problem.meta.get("difficulty") is not None:
        return str(problem.meta["difficulty"])
    if problem.meta.get("level") is not None:
        return f"level {problem.meta['level']}"
    return None


def sample_and_grade(sampler, grader, problems: list[Problem], params, score_at=(),
                     progress: bool = False) -> GradedBatch:
    """params.n samples per problem with in-cache verifier scores (one `generate` call), all
    graded in one `grade_batch`. Each sample's random stream is keyed by params.seed and its
    prompt's tokens (`rlvfast.sampler.rng`), so a problem draws the same samples however the
    problems are batched. `score_at`: token budgets whose P("Yes") `generate` also reads."""
    from rlvfast.sampler import format_prompt

    prompts = [format_prompt(sampler.tokenizer, p.problem) for p in problems]
    outputs = sampler.generate(prompts, params, score=True, progress=progress, score_at=score_at)
    completions = [c for out in outputs for c in out.completions]
    golds = [p.answer for p in problems for _ in range(params.n)]
    grades = grader.grade_batch([c.text for c in completions], golds)
    records = []
    for j, (c, g) in enumerate(zip(completions, grades)):
        problem = problems[j // params.n]
        records.append({"problem_id": problem.id, "sample": j % params.n, "difficulty": difficulty_of(problem),
                        "gold": str(problem.answer), "text": c.text, "answer": g.answer, "correct": bool(g.correct),
                        "grade_status": g.status, "score": float(c.score), "num_tokens": len(c.token_ids),
                        "finish_reason": c.finish_reason})
    return GradedBatch(list(problems), prompts, completions, records, params.n)


def pool_from_records(records: list[dict]) -> Pool:
    """One problem's records (any order) as a `Pool`, in sample order: answers normalized
    (`rlvfast.answers`), judge scores and length budgets when the records hold them."""
    records = sorted(records, key=lambda r: r["sample"])
    budgets = {}
    for L in records[0].get("budgets", {}):
        entries = [r["budgets"][L] for r in records]
        budgets[int(L)] = Budget([normalize_answer(e["answer"]) for e in entries], [e["correct"] for e in entries],
                                 [e["score"] for e in entries], [e["num_tokens"] for e in entries])
    judge = [r["judge_score"] for r in records] if "judge_score" in records[0] else None
    return Pool(records[0]["problem_id"], [normalize_answer(r["answer"]) for r in records],
                [r["correct"] for r in records], [r["score"] for r in records], [r["num_tokens"] for r in records],
                difficulty=records[0]["difficulty"], judge_scores=judge, budgets=budgets)


def evaluate(sampler, grader, problems: list[Problem], params, num_trials: int = 100, seed: int = 0) -> dict:
    """The short form of one evaluation (what the trainer's table prints): pass@1, the
    verifier's balanced accuracy, accuracy and AUC, and `<method>@<k>` for majority /
    best_of_n / weighted at k = 1, 2, 4, ..., params.n (`scaling.parallel_accuracy`)."""
    return evaluate_pools(sampler, grader, problems, params, num_trials, seed)[0]


def evaluate_pools(sampler, grader, problems: list[Problem], params, num_trials: int = 100,
                   seed: int = 0) -> tuple[dict, list[Pool]]:
    """`evaluate`'s summary and the problems' `Pool`s it was computed from (in problem order),
    for what needs each problem's samples (the comparison's paired bootstrap)."""
    batch = sample_and_grade(sampler, grader, problems, params)
    pools = [pool_from_records(records) for records in batch.by_problem()]
    return summarize(pools, num_trials, seed), pools


def summarize(pools: list[Pool], num_trials: int = 100, seed: int = 0) -> dict:
    """`evaluate`'s short form from the problems' Pools (each with the same n samples): the
    votes over `num_trials` subsets per problem and k (drawn from `seed` and the problem id),
    the verifier metrics over every sample in problem order."""
    parallel = parallel_accuracy(pools, num_trials=num_trials, seed=seed)
    verifier = verifier_metrics([s for p in pools for s in p.scores], [c for p in pools for c in p.correct])
    return short_summary(parallel, verifier, len(pools), pools[0].n)


def short_summary(parallel: dict, verifier: dict, num_problems: int, num_samples: int) -> dict:
    """The short form from `scaling` results: pass@1, verifier_balanced_accuracy / _accuracy /
    _auc, num_problems, num_samples and `<method>@<k>` for each voting method."""
    summary = {"pass@1": parallel["pass"]["1"], "verifier_balanced_accuracy": verifier["balanced_accuracy"],
               "verifier_accuracy": verifier["accuracy"], "verifier_auc": verifier["auc"],
               "num_problems": num_problems, "num_samples": num_samples}
    for method in VOTE_METHODS:
        for k, value in parallel[method].items():
            summary[f"{method}@{k}"] = value
    return summary
