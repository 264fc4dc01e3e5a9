"""The one evaluation path (rlvfast/eval/samples.py): records of sample_and_grade, the
batch's grouping by problem, and pool_from_records (sample order, normalized answers,
judge scores and budgets). The trainer's use of it: tests/train/test_report.py."""
from types import SimpleNamespace

import pytest

import rlvfast.sampler
from rlvfast.eval.samples import difficulty_of, pool_from_records, sample_and_grade
from rlvfast.sampler import SamplingParams
from rlvfast.tasks.grading import Grader
from rlvfast.tasks.problems import Problem


class FixedSampler:
    """Writes the given texts for every prompt, scored 0.1, 0.2, ... in order."""
    tokenizer = None

    def __init__(self, texts):
        self.texts = texts
        self.calls = []

    def generate(self, prompts, params, score=True, progress=False, score_at=()):
        self.calls.append((list(prompts), params.n, tuple(score_at)))
        return [SimpleNamespace(completions=[SimpleNamespace(text=t, token_ids=[0] * (i + 1), finish_reason="stop",
                                                             score=0.1 * (i + 1), budget_scores={})
                                             for i, t in enumerate(self.texts[:params.n])]) for _ in prompts]


@pytest.fixture(autouse=True)
def bare_prompts(monkeypatch):
    monkeypatch.setattr(rlvfast.sampler, "format_prompt", lambda tokenizer, text: f"Q: {text}")


def test_records_of_a_batch():
    problems = [Problem("p0", "1+1", "2", {"difficulty": "test"}), Problem("p1", "2+2", "4", {"level": 3})]
    sampler = FixedSampler(["so \\boxed{2}", "it is \\boxed{4}", "no answer"])
    with Grader(timeout=5.0) as grader:
        batch = sample_and_grade(sampler, grader, problems, SamplingParams(n=3, seed=1), score_at=[8])
    assert sampler.calls == [(["Q: 1+1", "Q: 2+2"], 3, (8,))]  # one generate call, prompts formatted
    assert batch.prompts == ["Q: 1+1", "Q: 2+2"] and len(batch.completions) == 6
    first, second = batch.by_problem()
    assert [(r["problem_id"], r["sample"], r["difficulty"], r["gold"]) for r in second] == [
        ("p1", 0, "level 3", "4"), ("p1", 1, "level 3", "4"), ("p1", 2, "level 3", "4")]
    assert [r["correct"] for r in first] == [True, False, False]
    assert [r["correct"] for r in second] == [False, True, False]
    assert [r["answer"] for r in first] == ["2", "4", None]
    assert [r["num_tokens"] for r in first] == [1, 2, 3]
    assert first[1]["score"] == pytest.approx(0.2) and first[0]["finish_reason"] == "stop"


def test_pool_from_records_orders_by_sample_and_keeps_judge_and_budgets():
    records = [{"problem_id": "p", "sample": s, "difficulty": None, "answer": a, "correct": c, "score": sc,
                "num_tokens": t, "judge_score": j,
                "budgets": {"4": {"answer": None, "correct": False, "score": sc / 2, "num_tokens": 4}}}
               for s, a, c, sc, t, j in [(1, " 1/2 ", False, 0.5, 9, 0.7), (0, "0.5", True, 0.25, 5, 0.1)]]
    pool = pool_from_records(records)
    assert pool.keys == ["1/2", "1/2"]  # 0.5 and 1/2 share one key (rlvfast.answers)
    assert (pool.correct, pool.scores, pool.num_tokens, pool.judge_scores) == ([True, False], [0.25, 0.5], [5, 9],
                                                                              [0.1, 0.7])
    assert list(pool.budgets) == [4] and pool.budgets[4].scores == [0.125, 0.25]


def test_difficulty_of():
    assert difficulty_of(Problem("a", "x", "1", {"difficulty": "hard"})) == "hard"
    assert difficulty_of(Problem("a", "x", "1", {"level": 5})) == "level 5"
    assert difficulty_of(Problem("a", "x", "1")) is None
