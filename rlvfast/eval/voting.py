"""Answer selection from N samples: majority vote, verifier-weighted vote, Best-of-N, pass@k.

Answers are compared by their `normalize_answer` key (`rlvfast.answers`, re-exported here:
the same key the grader's fast path calls correct when equal, so a vote groups exactly the
answers the grader would call equal without math-verify: "56" == " 56 " == "\\boxed{56}" ==
"56.0", "0.5" == "1/2" == "\\frac{1}{2}").
A sample without an answer (None) never wins unless every sample lacks one (then the vote
is None). Ties are broken deterministically: **the candidate whose first sample comes
earliest in the given order wins** (for Best-of-N: the earliest sample among the top scores).

The `*_index` functions take already-normalized keys and return the index of the winner's
representative sample (its first sample in the given order), so a caller that graded each
sample can read the vote's correctness without grading again; `majority_vote`,
`weighted_vote` and `best_of_n` return the normalized winning answer. Accuracy at k over
random subsets of a larger pool lives in `rlvfast.eval.scaling`. Grading is not done here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from rlvfast.answers import normalize_answer

__all__ = ["best_index", "best_of_n", "majority_index", "majority_vote", "normalize_answer", "pass_at_k",
           "weighted_index", "weighted_vote"]


def _check_lengths(keys: Sequence, scores: Sequence[float]) -> None:
    if len(keys) != len(scores):
        raise ValueError(f"answers and scores must have the same length, got {len(keys)} and {len(scores)}")


def majority_index(keys: Sequence[str | None]) -> int | None:
    """Index of the first sample of the most frequent non-None key (ties: earliest first sample)."""
    return weighted_index(keys, [1.0] * len(keys))


def weighted_index(keys: Sequence[str | None], scores: Sequence[float]) -> int | None:
    """Index of the first sample of the non-None key with the largest score sum.

    Sums accumulate in the given order; an exact tie goes to the key seen first."""
    _check_lengths(keys, scores)
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (key, score) in enumerate(zip(keys, scores)):
        if key is None:
            continue
        if key not in totals:
            totals[key], first[key] = 0.0, i
        totals[key] += float(score)
    best_key = None
    for key in totals:  # dicts keep insertion order: earlier first samples are visited first
        if best_key is None or totals[key] > totals[best_key]:
            best_key = key
    return None if best_key is None else first[best_key]


def best_index(keys: Sequence[str | None], scores: Sequence[float]) -> int | None:
    """Index of the highest-scoring sample that has an answer (ties: the earliest)."""
    _check_lengths(keys, scores)
    best = None
    for i, (key, score) in enumerate(zip(keys, scores)):
        if key is not None and (best is None or float(score) > float(scores[best])):
            best = i
    return best


def _winner(answers: Sequence[str | None], index_fn, *args) -> str | None:
    keys = [normalize_answer(a) for a in answers]
    index = index_fn(keys, *args)
    return None if index is None else keys[index]


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent (normalized) answer; None when no sample has an answer."""
    return _winner(answers, majority_index)


def weighted_vote(answers: Sequence[str | None], scores: Sequence[float]) -> str | None:
    """The (normalized) answer with the largest sum of verifier scores."""
    return _winner(answers, weighted_index, scores)


def best_of_n(answers: Sequence[str | None], scores: Sequence[float]) -> str | None:
    """The (normalized) answer of the single highest-scoring sample that has one."""
    return _winner(answers, best_index, scores)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Product form (Chen et al. 2021), stable for large n: C(n-c, k)/C(n, k) =
    prod_{i=n-c+1}^{n} (1 - k/i)."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"pass_at_k: {name} must be a non-negative int, got {value!r}")
    if c > n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
