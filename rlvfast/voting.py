"""Answer selection from N samples: majority vote, verifier-weighted vote, Best-of-N, pass@k.

Answers are compared after `normalize_answer` (whitespace, `\\boxed{}`, `$`, trailing period,
and exact rational numbers: "56" == " 56 " == "56.0", "0.5" == "1/2" == "\\frac{1}{2}").
A sample without an answer (None) never wins unless every sample lacks one (then the vote
is None). Ties are broken deterministically: **the candidate whose first sample comes
earliest in the given order wins** (for Best-of-N: the earliest sample among the top scores).

The `*_index` functions take already-normalized keys and return the index of the winner's
representative sample (its first sample in the given order), so a caller that graded each
sample can read the vote's correctness without grading again; `majority_vote`,
`weighted_vote` and `best_of_n` return the normalized winning answer. Accuracy at k over
random subsets of a larger pool lives in `rlvfast.scaling`. Grading is not done here.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

from rlvfast import grading

_BOXED = ("\\boxed{", "\\fbox{")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")
_FRACTION = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$|^([+-]?\d+)/([+-]?\d+)$")


def _unbox(text: str) -> str:
    """Content of the last `\\boxed{...}` (braces balanced), or the text itself."""
    start = max(text.rfind(marker) for marker in _BOXED)
    if start < 0:
        return text
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return text[i:]  # unbalanced: take the rest


def _as_fraction(text: str) -> Fraction | None:
    """The exact rational a plain number or simple fraction denotes, else None."""
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if _NUMBER.match(text):
        return Fraction(text)
    match = _FRACTION.match(text)
    if match is None:
        return None
    sign, num, den = (match.group(1), match.group(2), match.group(3)) if match.group(2) is not None \
        else ("", match.group(4), match.group(5))
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return -value if sign == "-" else value


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form used to compare answers; None (or nothing left) means no answer.

    The grader's `normalize_answer` (LaTeX spacing, $, \\text{}, thousands, leading zeros),
    after unboxing, plus exact rationals: "0.5", "1/2" and "\\frac{1}{2}" vote together."""
    if answer is None:
        return None
    text = grading.normalize_answer(_unbox(str(answer).strip()))
    if not text:
        return None
    value = _as_fraction(text)
    if value is None:
        return text
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


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
