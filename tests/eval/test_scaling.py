"""Scaling metrics on hand-built pools: accuracy at k, efficiency, verifier metrics, sequential, plots
(the printed table: tests/eval/test_eval_report.py)."""
import itertools
import math
import random

import pytest

from rlvfast.eval.plots import plot_parallel, plot_sequential
from rlvfast.eval.report import format_report
from rlvfast.eval.scaling import (Budget, Pool, auc, efficiency, k_grid, parallel_accuracy, sequential, subsets,
                                  summarize, verifier_metrics)

PNG = b"\x89PNG\r\n\x1a\n"


def _pool(pid, keys, correct, scores, difficulty=None, **kw):
    return Pool(pid, keys, correct, scores, [10] * len(keys), difficulty=difficulty, **kw)


def test_k_grid_and_subsets():
    assert k_grid(1) == [1]
    assert k_grid(8) == [1, 2, 4, 8]
    assert k_grid(6) == [1, 2, 4, 6]
    assert subsets(4, 2, 100, "s") == list(itertools.combinations(range(4), 2))  # exact: C(4,2)=6 <= 100
    drawn = subsets(64, 8, 50, "0:p")
    assert len(drawn) == 50 and all(len(set(s)) == 8 and list(s) == sorted(s) for s in drawn)
    assert drawn == subsets(64, 8, 50, "0:p")  # seeded by the key
    assert drawn != subsets(64, 8, 50, "0:q")


def test_parallel_accuracy_hand_worked():
    # n = 3, every subset enumerated. Pool a: answers 5 (right), 6, 6 (wrong) with the verifier on 5.
    a = _pool("a", ["5", "6", "6"], [True, False, False], [0.9, 0.2, 0.3])
    # Pool b: all right.
    b = _pool("b", ["1", "1", "1"], [True, True, True], [0.5, 0.5, 0.5])
    out = parallel_accuracy([a, b], num_trials=100)
    # k=1: per-sample accuracy (1/3 and 1) for every vote.
    for method in ("pass", "majority", "best_of_n", "weighted"):
        assert out[method]["1"] == pytest.approx((1 / 3 + 1) / 2)
    # k=2, pool a: subsets {0,1} {0,2} {1,2}. majority: tie 5-6 -> first seen (5) wins in the first
    # two, 6 in the last -> 2/3. weighted: 0.9 beats 0.2 and 0.3 -> 2/3. pass@2 = 1 - C(2,2)/C(3,2) = 2/3.
    assert out["majority"]["2"] == (2 + 3) / 6
    assert out["weighted"]["2"] == (2 + 3) / 6
    assert out["pass"]["2"] == pytest.approx((2 / 3 + 1) / 2)
    # k=3: majority picks 6 (wrong), weighted 0.9 > 0.5 picks 5, best-of-n picks 5.
    assert out["majority"]["3"] == 0.5
    assert out["weighted"]["3"] == 1.0
    assert out["best_of_n"]["3"] == 1.0
    assert out["pass"]["3"] == 1.0
    assert "judge_weighted" not in out


def test_parallel_accuracy_with_judge_and_errors():
    p = _pool("a", ["5", "6", "6"], [True, False, False], [0.9, 0.2, 0.3], judge_scores=[0.1, 0.5, 0.5])
    out = parallel_accuracy([p])
    assert out["judge_weighted"]["3"] == 0.0 and out["judge_best_of_n"]["3"] == 0.0
    with pytest.raises(ValueError, match="same number of samples"):
        parallel_accuracy([p, _pool("b", ["1"], [True], [0.5])])
    with pytest.raises(ValueError, match="judge_scores"):
        _pool("c", ["1"], [True], [0.5], judge_scores=[0.1, 0.2])


def test_efficiency_rows():
    parallel = {"majority": {"1": 0.3, "2": 0.4, "4": 0.5, "8": 0.55},
                "weighted": {"1": 0.3, "2": 0.5, "4": 0.55, "8": 0.6}}
    rows = efficiency(parallel, 8)
    assert [(r["k"], r["baseline_k"], r["ratio_text"]) for r in rows] == [
        (1, 1, "1"), (2, 4, "2"), (4, 8, "2"), (8, None, ">1")]
    assert rows[1]["ratio"] == 2.0 and rows[3]["ratio"] is None


def test_efficiency_has_no_ratio_when_there_is_nothing_to_match():
    # every accuracy 0: majority@1 "reaches" weighted@k for any k, which used to print 0.5x, 0.25x
    zeros = {"majority": {"1": 0.0, "2": 0.0, "4": 0.0}, "weighted": {"1": 0.0, "2": 0.0, "4": 0.0}}
    assert [(r["baseline_k"], r["ratio"], r["ratio_text"]) for r in efficiency(zeros, 4)] == [(None, None, "n/a")] * 3
    # weighted 0 at k=1 only: that row is n/a, the others are real ratios or a lower bound
    mixed = {"majority": {"1": 0.0, "2": 0.2, "4": 0.2}, "weighted": {"1": 0.0, "2": 0.2, "4": 0.5}}
    assert [(r["baseline_k"], r["ratio"], r["ratio_text"]) for r in efficiency(mixed, 4)] == [
        (None, None, "n/a"), (2, 1.0, "1"), (None, None, ">1")]


def _auc_pairs(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def test_auc_against_pairwise_with_ties():
    rng = random.Random(0)
    for _ in range(20):
        scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(30)]  # many ties
        labels = [rng.random() < 0.4 for _ in range(30)]
        if 0 < sum(labels) < 30:
            assert auc(scores, labels) == pytest.approx(_auc_pairs(scores, labels), abs=1e-12)
    assert auc([0.1, 0.9], [False, True]) == 1.0
    assert auc([0.3, 0.3], [False, True]) == 0.5
    assert auc([0.5, 0.6], [True, True]) is None


def test_verifier_metrics_hand_worked():
    m = verifier_metrics([0.9, 0.6, 0.4, 0.1, 0.7], [True, True, True, False, False])
    # predicted correct: 0.9, 0.6, 0.7 -> TP 2 of 3, TN 1 of 2
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["auc"] == pytest.approx(_auc_pairs([0.9, 0.6, 0.4, 0.1, 0.7], [1, 1, 1, 0, 0]))
    assert verifier_metrics([0.9], [True])["balanced_accuracy"] is None


def _budget(keys, correct, scores, tokens):
    return Budget(keys, correct, scores, tokens)


def test_sequential_threshold_policy():
    # Problem a is confident already at 4 tokens; problem b only at 8.
    a = _pool("a", ["3", "3"], [True, True], [0.9, 0.9], budgets={
        4: _budget(["3", "3"], [True, True], [0.9, 0.9], [4, 3]),
        8: _budget(["3", "3"], [True, True], [0.9, 0.9], [5, 3])})
    b = _pool("b", ["7", "7"], [True, True], [0.8, 0.8], budgets={
        4: _budget(["2", None], [False, False], [0.5, 0.5], [4, 4]),  # confidence 0.5
        8: _budget(["7", "7"], [True, True], [0.8, 0.8], [8, 6])})
    out = sequential([a, b], thresholds=[0.6, 0.4])
    assert out["lengths"] == [4, 8]
    assert out["fixed"]["4"] == {"accuracy": 0.5, "majority_accuracy": 0.5, "mean_tokens": (7 + 8) / 2}
    assert out["fixed"]["8"]["accuracy"] == 1.0 and out["fixed"]["8"]["mean_tokens"] == (8 + 14) / 2
    assert out["threshold"]["0.6"] == {"accuracy": 1.0, "mean_tokens": (7 + 14) / 2, "stops": {"4": 1, "8": 1}}
    assert out["threshold"]["0.4"]["stops"] == {"4": 2, "8": 0}
    assert out["threshold"]["0.4"]["accuracy"] == 0.5


def _random_pools(num, n, seed, difficulties=("test", "hard"), judge=False):
    rng = random.Random(seed)
    pools = []
    for i in range(num):
        keys = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        correct = [k == "1" for k in keys]
        scores = [round(rng.random(), 3) for _ in range(n)]
        pools.append(Pool(f"p{i}", keys, correct, scores, [rng.randint(5, 40) for _ in range(n)],
                          difficulty=difficulties[i % len(difficulties)],
                          judge_scores=[rng.random() for _ in range(n)] if judge else None))
    return pools


def test_summarize_by_difficulty_and_report(tmp_path):
    pools = _random_pools(6, 8, 1, judge=True)
    results = summarize(pools, num_trials=20, seed=3)
    assert results["num_problems"] == 6 and set(results["by_difficulty"]) == {"hard", "test"}
    assert results["by_difficulty"]["test"]["num_problems"] == 3
    assert set(results["parallel"]) == {"pass", "majority", "best_of_n", "weighted", "judge_best_of_n",
                                        "judge_weighted"}
    # pass@n is the fraction of problems with any correct sample
    assert results["parallel"]["pass"]["8"] == sum(any(p.correct) for p in pools) / 6
    assert results["verifier"]["num_samples"] == 48
    text = format_report(results)
    assert "difficulty hard" in text and "weighted" in text and "AUC" in text
    png = plot_parallel(results["parallel"], tmp_path / "parallel.png")
    data = png.read_bytes()
    assert data[:8] == PNG and len(data) > 5000


def test_plot_sequential_png(tmp_path):
    seq = {"lengths": [4, 8], "fixed": {"4": {"accuracy": 0.5, "majority_accuracy": 0.4, "mean_tokens": 7.5},
                                        "8": {"accuracy": 1.0, "majority_accuracy": 0.9, "mean_tokens": 11.0}},
           "threshold": {"0.6": {"accuracy": 1.0, "mean_tokens": 10.5, "stops": {"4": 1, "8": 1}}}}
    data = plot_sequential(seq, tmp_path / "seq.png").read_bytes()
    assert data[:8] == PNG and len(data) > 5000


def test_random_subsets_average_matches_exact_for_pass():
    # majority@1 over all singletons equals the per-sample accuracy = pass@1, for any pool
    pools = _random_pools(5, 16, 2)
    out = parallel_accuracy(pools, num_trials=100)
    assert out["majority"]["1"] == pytest.approx(out["pass"]["1"], abs=1e-12)
    assert math.isclose(out["pass"]["16"], sum(any(p.correct) for p in pools) / 5)
