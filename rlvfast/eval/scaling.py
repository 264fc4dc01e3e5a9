"""Test-time scaling metrics from graded, scored samples: the pure math behind `rlvfast.eval`.

Input: one `Pool` per problem (its n samples' normalized answers, correctness, verifier
scores, token counts, optionally judge scores and truncated-length variants). Output: plain
dicts for `results.json`:

- accuracy at k for k = 1, 2, 4, ..., n: `pass` is the unbiased estimator 1 - C(n-c,k)/C(n,k)
  (the exact mean over all k-subsets); the votes (`majority`, `weighted`, `best_of_n`, and
  `judge_*` with judge scores) are averaged over subsets of size k: all C(n, k) of them when
  there are at most `num_trials`, else `num_trials` random ones drawn by `subsets` (seeded by
  the seed, the problem id and k, so every method sees the same subsets and a resumed run
  draws the same ones). A subset is a sorted tuple of pool indices; a vote is correct when
  the winner's first sample in the subset is correct. Every problem has the same number of
  subsets T_k, so accuracy@k = (number of correct votes) / (P * T_k), one exact division.
- compute efficiency: for each k, the smallest k' on the same grid at which majority voting
  reaches weighted@k, and k'/k (">n/k" when it never does; "n/a" when weighted@k is 0, as
  there is then nothing to reach).
- the verifier as a classifier of its own samples: accuracy at a threshold, balanced accuracy,
  and AUC by the Mann-Whitney rank formula (ties get average ranks).
- sequential scaling: per problem, stop at the first length budget whose weighted-vote
  confidence (winning answer's score / all samples' score) reaches the threshold.

No model, sampling, grading, file I/O or printing here (the table: `rlvfast.eval.report`).
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from rlvfast.eval.voting import best_index, majority_index, pass_at_k, weighted_index

PARALLEL_METHODS = ("pass", "majority", "best_of_n", "weighted")
JUDGE_METHODS = ("judge_best_of_n", "judge_weighted")


@dataclass(slots=True)
class Budget:
    """A pool truncated to one length budget: each sample's first `length` tokens."""
    keys: list[str | None]
    correct: list[bool]
    scores: list[float]
    num_tokens: list[int]  # tokens spent per sample at this budget: min(full length, budget)


@dataclass(slots=True)
class Pool:
    """The n graded samples of one problem. `keys` are normalized answers (None: no answer)."""
    problem_id: str
    keys: list[str | None]
    correct: list[bool]
    scores: list[float]
    num_tokens: list[int]
    difficulty: str | None = None
    judge_scores: list[float] | None = None
    budgets: dict[int, Budget] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name in ("correct", "scores", "num_tokens"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Pool {self.problem_id!r}: {name} has {len(getattr(self, name))} "
                                 f"entries, keys has {n}")
        if self.judge_scores is not None and len(self.judge_scores) != n:
            raise ValueError(f"Pool {self.problem_id!r}: judge_scores has {len(self.judge_scores)} "
                             f"entries, keys has {n}")

    @property
    def n(self) -> int:
        return len(self.keys)


def k_grid(n: int) -> list[int]:
    """1, 2, 4, ... up to n, plus n itself when it is not a power of two."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def subsets(n: int, k: int, num_trials: int, seed_key: str) -> list[tuple[int, ...]]:
    """All k-subsets of range(n) when there are at most num_trials, else num_trials random
    sorted ones from random.Random(f"{seed_key}:{k}") (a str seed: stable across processes)."""
    if math.comb(n, k) <= num_trials:
        return list(combinations(range(n), k))
    rng = random.Random(f"{seed_key}:{k}")
    return [tuple(sorted(rng.sample(range(n), k))) for _ in range(num_trials)]


def _vote_methods(pool: Pool) -> dict[str, tuple]:
    """method -> (index function, scores or None)."""
    methods = {"majority": (majority_index, None), "best_of_n": (best_index, pool.scores),
               "weighted": (weighted_index, pool.scores)}
    if pool.judge_scores is not None:
        methods |= {"judge_best_of_n": (best_index, pool.judge_scores),
                    "judge_weighted": (weighted_index, pool.judge_scores)}
    return methods


def _subset_correct(pool: Pool, subset: Sequence[int], index_fn, scores) -> bool:
    keys = [pool.keys[i] for i in subset]
    winner = index_fn(keys) if scores is None else index_fn(keys, [scores[i] for i in subset])
    return winner is not None and pool.correct[subset[winner]]


def parallel_accuracy(pools: Sequence[Pool], num_trials: int = 100, seed: int = 0) -> dict[str, dict[str, float]]:
    """results["parallel"]: method -> {str(k): accuracy at k} over the grid of `k_grid(n)`."""
    if not pools:
        raise ValueError("parallel_accuracy needs at least one problem")
    n = pools[0].n
    if any(p.n != n for p in pools):
        raise ValueError(f"every problem needs the same number of samples, got {sorted({p.n for p in pools})}")
    methods = ["pass", *_vote_methods(pools[0])]
    out: dict[str, dict[str, float]] = {m: {} for m in methods}
    for k in k_grid(n):
        out["pass"][str(k)] = sum(pass_at_k(n, sum(p.correct), k) for p in pools) / len(pools)
        counts = dict.fromkeys(methods[1:], 0)
        num_subsets = 0
        for pool in pools:
            chosen = subsets(n, k, num_trials, f"{seed}:{pool.problem_id}")
            num_subsets += len(chosen)
            for method, (index_fn, scores) in _vote_methods(pool).items():
                counts[method] += sum(_subset_correct(pool, s, index_fn, scores) for s in chosen)
        for method, count in counts.items():
            out[method][str(k)] = count / num_subsets
    return out


def efficiency(parallel: dict[str, dict[str, float]], n: int, method: str = "weighted",
               baseline: str = "majority") -> list[dict]:
    """For each k: the smallest k' on the grid with baseline@k' >= method@k, and k'/k.

    Two rows carry no ratio (`ratio` None): when the baseline never gets there, `ratio_text`
    is the lower bound ">n/k"; when method@k is 0 there is nothing to match (any k' would do,
    so k'/k would only say where the grid starts), `baseline_k` is None too and `ratio_text`
    is "n/a"."""
    rows = []
    for k in k_grid(n):
        target = parallel[method][str(k)]
        reached = [kk for kk in k_grid(n) if parallel[baseline][str(kk)] >= target - 1e-12]
        k_prime = reached[0] if reached and target > 0 else None
        if target <= 0:
            ratio_text = "n/a"
        elif k_prime is None:
            ratio_text = f">{n / k:g}"
        else:
            ratio_text = f"{k_prime / k:g}"
        rows.append({"k": k, method: target, "baseline": baseline, "baseline_k": k_prime,
                     "ratio": None if k_prime is None else k_prime / k, "ratio_text": ratio_text})
    return rows


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve by the Mann-Whitney formula, ties at average rank; None when
    one class is absent."""
    scores_np = np.asarray(scores, dtype=np.float64)
    labels_np = np.asarray(labels, dtype=bool)
    num_pos, num_neg = int(labels_np.sum()), int((~labels_np).sum())
    if num_pos == 0 or num_neg == 0:
        return None
    _, inverse, counts = np.unique(scores_np, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    ranks = ((upper - counts + 1 + upper) / 2.0)[inverse]  # average rank of each sample
    return float((ranks[labels_np].sum() - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def verifier_metrics(scores: Sequence[float], labels: Sequence[bool], threshold: float = 0.5) -> dict:
    """The verifier as a classifier: predicts correct when score >= threshold."""
    scores_np = np.asarray(scores, dtype=np.float64)
    labels_np = np.asarray(labels, dtype=bool)
    predicted = scores_np >= threshold
    num_pos, num_neg = int(labels_np.sum()), int((~labels_np).sum())
    tpr = float((predicted & labels_np).sum() / num_pos) if num_pos else None
    tnr = float((~predicted & ~labels_np).sum() / num_neg) if num_neg else None
    return {"num_samples": int(labels_np.size), "num_correct": num_pos, "threshold": threshold,
            "accuracy": float((predicted == labels_np).mean()) if labels_np.size else None,
            "balanced_accuracy": None if tpr is None or tnr is None else (tpr + tnr) / 2.0,
            "true_positive_rate": tpr, "true_negative_rate": tnr,
            "auc": auc(scores_np, labels_np), "mean_score": float(scores_np.mean()) if scores_np.size else None}


def _budget_choice(budget: Budget) -> tuple[bool, float]:
    """(weighted vote correct, confidence = winner's score sum / all samples' score sum)."""
    winner = weighted_index(budget.keys, budget.scores)
    if winner is None:
        return False, 0.0
    total = sum(budget.scores)
    share = sum(s for key, s in zip(budget.keys, budget.scores) if key == budget.keys[winner])
    return budget.correct[winner], (share / total if total > 0 else 0.0)


def sequential(pools: Sequence[Pool], thresholds: Sequence[float]) -> dict:
    """Fixed length budgets against confidence-stopped sequential scaling.

    Tokens spent at a budget L are sum_j min(len_j, L) over a problem's n samples: the cost of
    continuing unfinished samples from their KV cache (nothing is recomputed), averaged over
    problems. The threshold policy stops at the first L with confidence >= threshold (else at
    the largest L) and pays the tokens of that L."""
    lengths = sorted(pools[0].budgets)
    if not lengths or any(sorted(p.budgets) != lengths for p in pools):
        raise ValueError("sequential needs every problem to have the same length budgets")
    per_problem = [{L: (*_budget_choice(p.budgets[L]), sum(p.budgets[L].num_tokens)) for L in lengths}
                   for p in pools]
    fixed = {}
    for L in lengths:
        maj = [p.budgets[L].correct[i] if (i := majority_index(p.budgets[L].keys)) is not None else False
               for p in pools]
        fixed[str(L)] = {"accuracy": sum(r[L][0] for r in per_problem) / len(pools),
                         "majority_accuracy": sum(maj) / len(pools),
                         "mean_tokens": sum(r[L][2] for r in per_problem) / len(pools)}
    adaptive = {}
    for t in thresholds:
        stops = [next((L for L in lengths if r[L][1] >= t), lengths[-1]) for r in per_problem]
        adaptive[f"{t:g}"] = {
            "accuracy": sum(r[L][0] for r, L in zip(per_problem, stops)) / len(pools),
            "mean_tokens": sum(r[L][2] for r, L in zip(per_problem, stops)) / len(pools),
            "stops": {str(L): stops.count(L) for L in lengths}}
    return {"lengths": lengths, "fixed": fixed, "threshold": adaptive}


def summarize(pools: Sequence[Pool], num_trials: int = 100, seed: int = 0,
              thresholds: Sequence[float] = (0.6,)) -> dict:
    """Everything for results.json, overall and per difficulty."""
    def block(group: Sequence[Pool]) -> dict:
        parallel = parallel_accuracy(group, num_trials, seed)
        out = {"num_problems": len(group), "n": group[0].n,
               "mean_tokens_per_sample": sum(map(sum, (p.num_tokens for p in group))) / (len(group) * group[0].n),
               "parallel": parallel, "efficiency": efficiency(parallel, group[0].n),
               "verifier": verifier_metrics([s for p in group for s in p.scores],
                                            [c for p in group for c in p.correct])}
        if group[0].judge_scores is not None:
            out["judge"] = verifier_metrics([s for p in group for s in p.judge_scores],
                                            [c for p in group for c in p.correct])
            out["judge_efficiency"] = efficiency(parallel, group[0].n, method="judge_weighted")
        if group[0].budgets:
            out["sequential"] = sequential(group, thresholds)
        return out

    results = block(pools)
    difficulties = sorted({p.difficulty for p in pools if p.difficulty is not None})
    results["by_difficulty"] = {d: block([p for p in pools if p.difficulty == d]) for d in difficulties}
    return results
