"""Grading throughput: the in-process fast path, math-verify in the worker pool, time-out recovery.

Run: `python -m pytest bench/test_bench_grading.py --benchmark-only`. Rates go to extra_info
(answers/s); nothing here asserts speed.
"""
import json
import random
import resource
import time
from pathlib import Path

import pytest

from rlvfast.tasks.grading import Grader, extract_answer
from rlvfast.tasks.synthetic import make_problems, solution_text

MATH500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def synthetic_batch():
    problems = make_problems(10_000, "ops=4,digits=2", seed=0)
    rng = random.Random(0)
    return [solution_text(p, 0.3, rng) for p in problems], [p.answer for p in problems]


def test_bench_extract_answer(benchmark, synthetic_batch):
    texts, _ = synthetic_batch
    benchmark(lambda: [extract_answer(t) for t in texts])
    benchmark.extra_info["answers_per_s"] = len(texts) / benchmark.stats.stats.mean


def test_bench_fast_path_synthetic(benchmark, synthetic_batch):
    texts, golds = synthetic_batch
    with Grader() as grader:
        results = benchmark(grader.grade_batch, texts, golds)
        assert grader._pool._zygote is None  # decided in-process: no worker was needed
    benchmark.extra_info["answers_per_s"] = len(texts) / benchmark.stats.stats.mean
    benchmark.extra_info["accuracy"] = sum(r.correct for r in results) / len(results)
    benchmark.extra_info["peak_rss_mib"] = _peak_rss_mib()


@pytest.mark.parametrize("num_workers", [1, 2])
def test_bench_math_verify_math500(benchmark, num_workers):
    if not MATH500.exists():
        pytest.skip(f"{MATH500} not present")
    rows = [json.loads(line) for line in MATH500.open()]
    texts, golds = [r["solution"] for r in rows], [r["answer"] for r in rows]
    with Grader(timeout=10.0, num_workers=num_workers, use_fast_path=False) as grader:
        grader.start(wait=True)
        results = benchmark.pedantic(grader.grade_batch, args=(texts, golds), rounds=2, iterations=1,
                                     setup=grader._cache.clear)
    benchmark.extra_info["answers_per_s"] = len(texts) / benchmark.stats.stats.mean
    benchmark.extra_info["num_correct"] = sum(r.correct for r in results)
    benchmark.extra_info["num_timeouts"] = grader.num_timeouts


def test_bench_timeout_recovery(benchmark):
    """A hang (killed at the 2 s time-out) followed by an answer that needs a fresh worker."""
    with Grader(timeout=2.0, num_workers=1) as grader:
        grader.start(wait=True)

        def hang_then_grade():
            grader._cache.clear()
            first = grader.grade(r"\boxed{9^{9^{9}}}", "3")
            start = time.perf_counter()
            second = grader.grade(r"\boxed{2\sqrt{2}}", r"\sqrt{8}")  # needs math-verify, not the fast path
            return first, second, time.perf_counter() - start

        first, second, recovery_s = benchmark.pedantic(hang_then_grade, rounds=2, iterations=1)
    assert first.status == "timeout" and second.correct
    benchmark.extra_info["recovery_s"] = recovery_s
