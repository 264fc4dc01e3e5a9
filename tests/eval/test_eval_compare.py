"""The comparison of two runs (rlvfast/eval/compare.py): the paired bootstrap on hand-made
vectors, the per-problem votes against the table's @n numbers, the efficiency rows on a
hand-made dict, the table and the PNG; and `python -m rlvfast.eval --baseline` drawing it
from two finished evaluations. (Named test_eval_compare: tests/train/test_compare.py exists,
and pytest's default import mode needs distinct basenames.)"""
import random

import numpy as np
import pytest
from scripted_sampler import ScriptedSampler

import rlvfast.sampler
from rlvfast.cli import UserError
from rlvfast.eval import compare
from rlvfast.eval import run as rlv_eval
from rlvfast.eval.samples import short_summary
from rlvfast.eval.scaling import Pool, parallel_accuracy, verifier_metrics

PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the bootstrap
def test_bootstrap_estimate_is_the_difference_of_means_and_inside_its_interval():
    ours = [1, 1, 0, 1, 0, 1, 1, 0, 1, 1]
    theirs = [0, 1, 0, 0, 0, 1, 0, 0, 1, 0]
    b = compare.paired_bootstrap(ours, theirs, num_resamples=2000, seed=3)
    assert b["estimate"] == pytest.approx(np.mean(ours) - np.mean(theirs)) == pytest.approx(0.4)
    assert b["low"] <= b["estimate"] <= b["high"]
    # the per-problem differences are 0 or 1, so every resampled mean is in [0, 1]; 4 of 10 are 1,
    # so an interval that reached 0 would need a resample without any of the four (p = 0.6^10 = 0.6%)
    assert 0.0 < b["low"] < 0.4 < b["high"] <= 1.0
    assert (b["num_resamples"], b["num_problems"], b["level"]) == (2000, 10, 0.95)


def test_bootstrap_of_equal_vectors_is_zero_and_a_constant_shift_is_exact():
    same = compare.paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1])
    assert (same["estimate"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    shifted = compare.paired_bootstrap([1, 1, 1], [0, 0, 0])  # every problem differs by exactly 1
    assert (shifted["estimate"], shifted["low"], shifted["high"]) == (1.0, 1.0, 1.0)


def test_bootstrap_is_seeded():
    rng = random.Random(0)
    ours, theirs = [rng.random() for _ in range(50)], [rng.random() for _ in range(50)]
    first = compare.paired_bootstrap(ours, theirs, seed=7)
    assert compare.paired_bootstrap(ours, theirs, seed=7) == first
    other = compare.paired_bootstrap(ours, theirs, seed=8)
    assert (other["low"], other["high"]) != (first["low"], first["high"])  # continuous values: never equal
    assert other["estimate"] == first["estimate"]


def test_bootstrap_refuses_unpaired_vectors():
    with pytest.raises(ValueError, match="equal-length non-empty vectors, got 3 and 2"):
        compare.paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="got 0 and 0"):
        compare.paired_bootstrap([], [])


# ----------------------------------------------------------------------------- per-problem votes
def test_vote_correct_breaks_ties_as_the_voting_functions_do():
    # majority: "a" and "b" tie 1-1, the earlier first sample ("a", wrong) wins; weighted: "b" has more score
    pool = Pool("p", ["a", "b"], [False, True], [0.2, 0.9], [3, 3])
    no_answer = Pool("q", [None, None], [False, False], [0.5, 0.5], [3, 3])
    assert compare.vote_correct([pool, no_answer], "majority").tolist() == [0.0, 0.0]
    assert compare.vote_correct([pool, no_answer], "weighted").tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="got 'best_of_n'"):
        compare.vote_correct([pool], "best_of_n")


def random_pools(seed: int, num_problems: int = 12, n: int = 4) -> list[Pool]:
    rng = random.Random(seed)
    pools = []
    for i in range(num_problems):
        keys = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        pools.append(Pool(f"p{i}", keys, [k == "1" for k in keys], [round(rng.random(), 3) for _ in keys], [5] * n))
    return pools


def evaluated(pools: list[Pool]) -> compare.Evaluated:
    parallel = parallel_accuracy(pools)
    verifier = verifier_metrics([s for p in pools for s in p.scores], [c for p in pools for c in p.correct])
    return compare.Evaluated(short_summary(parallel, verifier, len(pools), pools[0].n), pools)


def test_the_vectors_means_are_the_tables_numbers_at_n():
    """The only n-subset is all samples: each vector's mean is exactly the table's @n value."""
    for seed in range(3):
        pools = random_pools(seed)
        summary = evaluated(pools).summary
        for method in ("majority", "weighted"):
            assert compare.vote_correct(pools, method).mean() == pytest.approx(summary[f"{method}@4"], abs=1e-12)


# ----------------------------------------------------------------------------- efficiency, table, PNG
def test_efficiency_rows_find_the_smallest_k_prime():
    base = {"majority": {"1": 0.5, "2": 0.6, "4": 0.7}}
    rlv = {"weighted": {"1": 0.55, "2": 0.7, "4": 0.8}}
    rows = compare.efficiency_rows(base, rlv, 4)
    # weighted@1 = 0.55 first reached by majority@2; 0.7 by majority@4; 0.8 never (> n/k = 1)
    assert [(r["k"], r["baseline_k"], r["ratio_text"]) for r in rows] == [(1, 2, "2"), (2, 4, "2"), (4, None, ">1")]


def test_compare_table_and_plot(tmp_path):
    base, rlv = evaluated(random_pools(1)), evaluated(random_pools(2))
    start = {"pass@1": 0.25, "verifier_balanced_accuracy": 0.5, "verifier_auc": None}
    c = compare.compare({"test": base}, {"test": rlv}, {"test": start})
    assert c["base_method"]["test"] is base.summary and c["rlv"]["test"] is rlv.summary
    b = c["bootstrap"]["test"]
    assert b["estimate"] == pytest.approx(rlv.summary["weighted@4"] - base.summary["majority@4"], abs=1e-12)
    assert (b["rlv"], b["base_method"]) == ("weighted@4", "majority@4")
    assert c["efficiency"]["test"] == compare.efficiency_rows(compare.curves(base.summary),
                                                              compare.curves(rlv.summary), 4)
    lines = compare.format_comparison(c).splitlines()
    assert lines[0] == "== test: 12 held-out problems, 4 samples each =="
    assert lines[1].split() == ["base", "model", "base", "method", "RL^V"]
    assert lines[2].split() == ["pass@1", "0.250", f"{base.summary['pass@1']:.3f}", f"{rlv.summary['pass@1']:.3f}"]
    assert lines[4].split()[2] == "n/a"  # the start's AUC is undefined
    assert lines[5].split() == ["N", "1", "2", "4"]
    assert lines[6].split() == ["base", "method", "majority"] + [f"{base.summary[f'majority@{k}']:.3f}" for k in (1, 2, 4)]
    assert lines[11].split() == ["RL^V", "weighted"] + [f"{rlv.summary[f'weighted@{k}']:.3f}" for k in (1, 2, 4)]
    assert lines[12].startswith("efficiency: base method majority k'/k to reach RL^V weighted@k: k=1: ")
    assert lines[13] == (f"RL^V weighted@4 - base method majority@4: {b['estimate']:+.3f}, 95% interval "
                         f"[{b['low']:+.3f}, {b['high']:+.3f}] (paired bootstrap: 2000 resamples of the 12 problems)")
    path = compare.plot_comparison(c, tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG


def test_compare_needs_the_same_problems_and_n():
    base, rlv = evaluated(random_pools(1)), evaluated(random_pools(2))
    fewer = evaluated(random_pools(2, num_problems=11))
    with pytest.raises(ValueError, match="different problems"):
        compare.compare({"test": base}, {"test": fewer})
    other_n = evaluated(random_pools(2, n=2))
    with pytest.raises(ValueError, match="2 samples per problem against 4"):
        compare.compare({"test": base}, {"test": other_n})
    # the problems are matched by id, not by position
    shuffled = compare.Evaluated(rlv.summary, rlv.pools[::-1])
    assert compare.compare({"t": base}, {"t": shuffled})["bootstrap"] == compare.compare({"t": base}, {"t": rlv})["bootstrap"]


# ----------------------------------------------------------------------------- python -m rlvfast.eval --baseline
@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(rlvfast.sampler, "Sampler", ScriptedSampler)
    monkeypatch.setattr(rlvfast.sampler, "format_prompt", lambda tokenizer, text: text)


def test_eval_with_a_baseline_prints_the_comparison(tmp_path, tiny_model_dir, scripted, capsys):
    common = ["--model", str(tiny_model_dir), "--data", "synthetic:test", "--num-problems", "6", "--n", "4"]
    base = rlv_eval.run(common + ["--seed", "1", "--out", str(tmp_path / "a")])
    ours = rlv_eval.run(common + ["--seed", "2", "--out", str(tmp_path / "b"), "--baseline", str(tmp_path / "a")])
    c = ours["comparison"]
    assert c["rlv"]["synthetic:test"]["weighted@4"] == ours["parallel"]["weighted"]["4"]
    assert c["base_method"]["synthetic:test"]["majority@4"] == base["parallel"]["majority"]["4"]
    b = c["bootstrap"]["synthetic:test"]
    assert b["num_problems"] == 6 and b["num_resamples"] == 2000
    assert b["estimate"] == pytest.approx(ours["parallel"]["weighted"]["4"] - base["parallel"]["majority"]["4"])
    assert b["low"] <= b["estimate"] <= b["high"]
    assert c["efficiency"]["synthetic:test"] == ours["vs_baseline"]["efficiency"]
    out = capsys.readouterr().out
    assert "== synthetic:test: 6 held-out problems, 4 samples each ==" in out
    assert f"this run weighted@4 - baseline majority@4: {b['estimate']:+.3f}, 95% interval" in out
    assert (tmp_path / "b" / "comparison.png").read_bytes()[:8] == PNG


def test_a_baseline_without_this_runs_problems_is_refused_before_sampling(tmp_path, tiny_model_dir, scripted):
    common = ["--model", str(tiny_model_dir), "--n", "4", "--num-problems", "3"]
    rlv_eval.run(common + ["--data", "synthetic:test", "--out", str(tmp_path / "a")])
    with pytest.raises(UserError, match=r"samples.jsonl lacks 3 of this run's 3 problems .*not comparable"):
        rlv_eval.run(common + ["--data", "synthetic:hard", "--out", str(tmp_path / "b"),
                               "--baseline", str(tmp_path / "a")])
    assert not (tmp_path / "b" / "samples.jsonl").exists()
