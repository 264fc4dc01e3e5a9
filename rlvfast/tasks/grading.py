"""Answer grading: extract the final answer from a solution and decide if it equals the gold.

Answers come from `rlvfast.answers` (re-exported here: `extract_answer`, `last_boxed`,
`normalize_answer`). `is_correct(text, gold)` and `Grader.grade/grade_batch` decide
equivalence in two tiers:

1. In-process fast path, no IPC: answers with equal `normalize_answer` keys are correct
   (the key is the one voting groups by, and equal keys mean equal values); two different
   integers (the synthetic task, GSM8K, AIME) are wrong; no key (an empty answer) is wrong.
2. Everything else goes to math-verify in worker processes (`rlvfast.tasks.grade_pool`), each
   answer under a hard wall-clock limit: sympy can hang for minutes, so a worker still busy
   at the deadline is killed and replaced, and the answer grades wrong, status "timeout".
   Workers start lazily, on the first answer that needs math-verify.

This module does not extract or normalize answers (`rlvfast.answers`), load datasets
(`rlvfast.tasks.problems`) or choose answers (`rlvfast.eval.voting`).
"""
from __future__ import annotations

import atexit
import threading
import weakref
from dataclasses import dataclass

from rlvfast.answers import MAX_TEXT_CHARS, extract_answer, is_int_key, last_boxed, normalize_answer
from rlvfast.tasks.grade_pool import VerifyPool

__all__ = ["MAX_ANSWER_CHARS", "MAX_TEXT_CHARS", "GradeResult", "Grader", "default_grader", "extract_answer",
           "is_correct", "last_boxed", "normalize_answer"]

MAX_ANSWER_CHARS = 1_000   # longer extracted answers grade wrong without math-verify


def _fast_decide(answer: str, gold: str) -> bool | None:
    """True/False when the answer keys settle it, None when math-verify must."""
    a, g = normalize_answer(answer), normalize_answer(gold)
    if a is None or g is None:
        return False
    if a == g:
        return True
    if is_int_key(a) and is_int_key(g):
        return False
    return None


@dataclass(frozen=True, slots=True)
class GradeResult:
    correct: bool
    answer: str | None   # the extracted answer (None when there was none)
    status: str          # "ok" | "timeout" | "error"


class Grader:
    """Grades solutions against gold answers with a hard per-answer wall-clock limit.

    Thread-safe (one batch at a time through the pool; the fast path needs no lock) and
    signal-free in the caller, so it works from worker threads and in several processes
    (each process makes its own workers). Use as a context manager or call `close()`.
    """

    def __init__(self, timeout: float = 5.0, num_workers: int = 2, cache_size: int = 65536,
                 use_fast_path: bool = True) -> None:
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"Grader.timeout must be a number > 0 seconds, got {timeout!r}")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"Grader.num_workers must be an int >= 1, got {num_workers!r}")
        self.timeout = float(timeout)
        self.num_workers = num_workers
        self.cache_size = cache_size
        self.use_fast_path = use_fast_path  # False: every answer goes to math-verify (tests, benchmarks)
        self.num_graded = 0
        self.num_fast = 0        # decided in-process
        self.num_timeouts = 0
        self.num_errors = 0
        self._pool = VerifyPool(num_workers, self.timeout)
        self._cache: dict[tuple[str, str], tuple[bool, str]] = {}
        self._lock = threading.Lock()
        _LIVE_GRADERS.add(self)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, wait: bool = False) -> None:
        """Start the workers now (not on the first math-verify answer); `wait`: until ready."""
        with self._lock:
            self._pool.start(wait)

    def close(self) -> None:
        """Stop the workers (a later grade starts new ones)."""
        is_locked = self._lock.acquire(timeout=2.0)  # at exit a daemon thread may hold it
        try:
            self._pool.close()
        finally:
            if is_locked:
                self._lock.release()

    def grade(self, text: str | None, gold: str | int | float | None) -> GradeResult:
        return self.grade_batch([text], [gold])[0]

    def grade_batch(self, texts: list[str | None], golds: list) -> list[GradeResult]:
        """Grade many solutions; slow answers time out one by one, in parallel."""
        if len(texts) != len(golds):
            raise ValueError(f"grade_batch needs as many golds as texts, got {len(texts)} texts "
                             f"and {len(golds)} golds")
        results: list[GradeResult | None] = [None] * len(texts)
        pending: dict[tuple[str, str], list[int]] = {}
        num_fast = 0
        for i, (text, gold) in enumerate(zip(texts, golds)):
            answer = extract_answer(text)
            gold_text = _gold_text(gold)
            if gold_text is None:
                results[i] = GradeResult(False, answer, "error")
            elif answer is None or len(answer) > MAX_ANSWER_CHARS:
                results[i] = GradeResult(False, answer, "ok")
            elif self.use_fast_path and (decided := _fast_decide(answer, gold_text)) is not None:
                results[i] = GradeResult(decided, answer, "ok")
                num_fast += 1
            elif (cached := self._cache.get((answer, gold_text))) is not None:
                results[i] = GradeResult(cached[0], answer, cached[1])
            else:
                pending.setdefault((answer, gold_text), []).append(i)
        with self._lock:
            if pending:
                for key, outcome in zip(pending, self._pool.run(list(pending))):
                    if outcome[1] != "error":  # a crash may not repeat; a hang would
                        if len(self._cache) >= self.cache_size:  # FIFO eviction
                            self._cache.pop(next(iter(self._cache)))
                        self._cache[key] = outcome
                    for i in pending[key]:
                        results[i] = GradeResult(outcome[0], key[0], outcome[1])
            self.num_graded += len(results)
            self.num_fast += num_fast
            self.num_timeouts += sum(r.status == "timeout" for r in results)
            self.num_errors += sum(r.status == "error" for r in results)
        return results  # type: ignore[return-value]


def _gold_text(gold) -> str | None:
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    text = str(gold).strip()
    return text or None


_LIVE_GRADERS: weakref.WeakSet[Grader] = weakref.WeakSet()
_DEFAULT: Grader | None = None
_DEFAULT_LOCK = threading.Lock()


def default_grader() -> Grader:
    """The process-wide Grader behind `is_correct` (made on first use, closed at exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Grader()  # after a fork its pool notices the new pid and starts afresh
        return _DEFAULT


def is_correct(text: str | None, gold: str | int | float | None) -> bool:
    """Whether the solution's final answer equals the gold (a time-out counts as wrong)."""
    return default_grader().grade(text, gold).correct


@atexit.register
def _close_all() -> None:
    for grader in list(_LIVE_GRADERS):
        grader.close()
