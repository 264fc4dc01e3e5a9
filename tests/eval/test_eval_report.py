"""The printed forms (rlvfast/eval/report.py): the eval command's table from summarize()'s
results, line for line, and the number rules it shares with the trainer's table ("n/a":
undefined; "-": not measured; tests/train/test_report.py prints the trainer's table)."""
from rlvfast.eval.report import NOT_MEASURED, UNDEFINED, format_report, ratio
from rlvfast.eval.scaling import Pool, efficiency, summarize


def _pool(pid, keys, correct, scores, difficulty=None):
    return Pool(pid, keys, correct, scores, [10] * len(keys), difficulty=difficulty)


def test_ratio_rules():
    assert [ratio(v) for v in (0.5, 1 / 3, 1.0, None, float("nan"))] == ["0.500", "0.333", "1.000", "n/a", "n/a"]
    assert ratio(None, NOT_MEASURED) == "-" and (UNDEFINED, NOT_MEASURED) == ("n/a", "-")


def test_report_line_for_line():
    pools = [_pool("a", ["1", "1", "2", None], [True, True, False, False], [0.9, 0.6, 0.2, 0.1], "test"),
             _pool("b", ["5", "6", "6", "5"], [False, True, True, False], [0.3, 0.8, 0.7, 0.4], "hard")]
    text = format_report(summarize(pools, num_trials=10, seed=0))
    blocks = text.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["== all problems: 2 problems x 4 samples (10.0 tokens/sample) ==",
                                                   "== difficulty hard: 1 problems x 4 samples (10.0 tokens/sample) ==",
                                                   "== difficulty test: 1 problems x 4 samples (10.0 tokens/sample) =="]
    # worked by hand: k=2 takes all 6 pairs of each pool; at k=2 majority is right in 5/6 (a) and 3/6 (b)
    assert blocks[0].splitlines()[1:] == [
        "               k       1       2       4",
        "            pass   0.500   0.833   1.000",  # each pool 2 of 4 right: 1 - C(2,2)/C(4,2)
        "        majority   0.500   0.667   0.500",  # b's 2-2 tie at k=4 goes to "5", its first sample
        "       best_of_n   0.500   0.833   1.000",
        "        weighted   0.500   0.833   1.000",
        "      efficiency: majority k'/k to match weighted@k: k=1: 1x  k=2: >2x  k=4: >1x",
        "        verifier: accuracy@0.5 1.000  balanced 1.000  AUC 1.000  (4/8 samples correct)",
    ]


def test_report_prints_na_for_pools_that_are_all_wrong():
    pools = [_pool(p, ["7", "8", None, "7"], [False] * 4, [0.4, 0.9, 0.1, 0.3]) for p in ("a", "b")]
    results = summarize(pools, num_trials=10)
    assert results["parallel"]["weighted"] == {"1": 0.0, "2": 0.0, "4": 0.0}
    assert [r["ratio"] for r in results["efficiency"]] == [None, None, None]
    lines = format_report(results).splitlines()
    efficiency_line = next(x for x in lines if "efficiency" in x)
    assert efficiency_line.endswith("k=1: n/a  k=2: n/a  k=4: n/a"), efficiency_line
    # one class only: balanced accuracy and AUC are undefined, n/a as in the trainer's table (was "-")
    verifier_line = next(x for x in lines if "verifier" in x)
    assert verifier_line == "        verifier: accuracy@0.5 0.750  balanced  n/a   AUC  n/a   (0/8 samples correct)"
    parallel = {"pass": {"1": 0.3, "2": 0.6}, "majority": {"1": 0.3, "2": 0.4}, "weighted": {"1": 0.3, "2": 0.5}}
    block = {"num_problems": 1, "n": 2, "mean_tokens_per_sample": 1.0, "parallel": parallel,
             "efficiency": efficiency(parallel, 2)}
    assert "k=1: 1x  k=2: >1x" in format_report(block)
