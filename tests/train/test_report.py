"""The trainer's end-of-run table (rlvfast/train/report.py): the same numbers as
`python -m rlvfast.eval` on the same samples (one evaluation path), the splits it is measured
on, and the printed table, line for line.

A scripted sampler stands in for the model: synthetic solutions with 40% wrong steps and
scores that favour right answers, so votes and the verifier's metrics are not all 0.
"""
import json

import pytest
from scripted_sampler import ScriptedSampler

import rlvfast.models
import rlvfast.sampler
from rlvfast.eval import run as rlv_eval
from rlvfast.tasks.grading import Grader
from rlvfast.tasks.synthetic import make_problems
from rlvfast.train import report
from rlvfast.train.config import TrainConfig


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(rlvfast.sampler, "Sampler", ScriptedSampler)
    monkeypatch.setattr(rlvfast.sampler, "format_prompt", lambda tokenizer, text: text)
    monkeypatch.setattr(rlvfast.models, "load_model", lambda path: (None, None))
    return ScriptedSampler()


def test_table_numbers_are_the_eval_commands_numbers(tmp_path, scripted, capsys):
    """report.evaluate and `python -m rlvfast.eval` run one path: with the same problems,
    samples (n, seed, temperature, length) and subsets, every number agrees exactly."""
    config = TrainConfig(eval_samples=4, max_new_tokens=48, temperature=1.0)
    problems = make_problems(6, "test", seed=0)
    with Grader(timeout=5.0) as grader:
        summary = report.evaluate(scripted, problems, config, grader, seed=3)
    results = rlv_eval.run(["--model", str(tmp_path), "--out", str(tmp_path / "out"), "--data", "synthetic:test",
                            "--num-problems", "6", "--n", "4", "--max-tokens", "48", "--seed", "3"])
    capsys.readouterr()
    assert summary["num_problems"] == 6 and summary["num_samples"] == 4
    assert summary["pass@1"] == results["parallel"]["pass"]["1"]
    for method in ("majority", "best_of_n", "weighted"):
        assert {k: summary[f"{method}@{k}"] for k in ("1", "2", "4")} == results["parallel"][method], method
    verifier = results["verifier"]
    assert (summary["verifier_balanced_accuracy"], summary["verifier_accuracy"], summary["verifier_auc"]) == (
        verifier["balanced_accuracy"], verifier["accuracy"], verifier["auc"])
    # not a vacuous agreement: the scripted samples are partly right and the verifier ranks them
    assert 0 < summary["pass@1"] < 1 and 0.5 < summary["verifier_auc"] <= 1
    records = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert summary["pass@1"] == sum(r["correct"] for r in records) / 24


def test_num_samples_overrides_eval_samples(scripted):
    config = TrainConfig(eval_samples=4)
    with Grader(timeout=5.0) as grader:
        summary = report.evaluate(scripted, make_problems(3, "test", seed=0), config, grader, seed=1, num_samples=2)
    assert summary["num_samples"] == 2
    assert sorted(k for k in summary if k.startswith("majority@")) == ["majority@1", "majority@2"]


def test_eval_problems_are_the_same_every_run():
    config = TrainConfig(eval_problems=3, eval_splits=["test", "hard"])
    splits = report.eval_problems(config)
    assert list(splits) == ["test", "hard"] and [len(p) for p in splits.values()] == [3, 3]
    assert splits["hard"] == make_problems(3, "hard", seed=0)
    assert [p.id for p in report.eval_problems(config)["test"]] == [p.id for p in splits["test"]]


def _result(**values):
    result = {"num_problems": 6, "num_samples": 2, "pass@1": 0.25, "verifier_balanced_accuracy": 0.625,
              "majority@1": 0.25, "majority@2": 1 / 3, "best_of_n@1": 0.25, "best_of_n@2": 0.5,
              "weighted@1": 0.25, "weighted@2": 0.5}
    return result | values


def test_format_table_line_for_line():
    summary = {"eval": {"test": _result(), "hard": _result(verifier_balanced_accuracy=None)},
               "warm_start": {"test": {"pass@1": 0.125, "verifier_balanced_accuracy": float("nan")}}}
    assert report.format_table(summary).splitlines() == [
        "== test: 6 held-out problems, 2 samples each ==",
        "pass@1: warm start 0.125 -> final 0.250   verifier balanced accuracy: warm start n/a -> final 0.625",
        "N                 1       2",
        "majority      0.250   0.333",
        "best_of_n     0.250   0.500",
        "weighted      0.250   0.500",
        "== hard: 6 held-out problems, 2 samples each ==",
        # no warm-start numbers for this split: not measured ("-"); None at the end: undefined ("n/a")
        "pass@1: warm start - -> final 0.250   verifier balanced accuracy: warm start - -> final n/a",
        "N                 1       2",
        "majority      0.250   0.333",
        "best_of_n     0.250   0.500",
        "weighted      0.250   0.500",
        report.BEST_OF_N_NOTE,
    ]


def test_number_format_rules():
    from rlvfast.eval.report import ratio

    assert [ratio(v) for v in (0.5, 1 / 3, 0.0, None, float("nan"))] == ["0.500", "0.333", "0.000", "n/a", "n/a"]
    assert ratio(None, "-") == "-" and ratio(0.25, "-") == "0.250"
