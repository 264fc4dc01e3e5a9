"""`--compare` under torchrun (CPU, gloo, FSDP2) and its evaluations split over the ranks, against one process.

The tiny default (the shipped base model: it solves about half of the `test` problems, so the
votes and the verifier's metrics are not degenerate), 2 steps, 5 held-out problems per split at
world size 2 (2 and 3 per rank: uneven shares), against the same comparison in one process:
the same summary keys and files, the base model's evaluation (split over the ranks) and each
run's first step equal. The split evaluation of the final models (RL^V's sampled on its
FSDP2-sharded weights, unsharded) equals one process's evaluation of the models the run wrote,
on the same problems and seed; `--resume` at world size 2 reuses both runs and gives the same numbers.
A lone run's table (`--no-compare`: the start's and the final evaluation) at world size 2, likewise, on
one problem per split (rank 0 samples none).
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from rlvfast.models import BASE_MODEL_DIR, load_model
from rlvfast.sampler import Sampler
from rlvfast.tasks.grading import Grader
from rlvfast.train import loop as train_mod
from rlvfast.train import report
from rlvfast.train.compare import BASE_DIR, BASE_MODEL_FILE, PLOT_FILE
from rlvfast.train.config import TrainConfig
from test_distributed import assert_same_step, finish, metrics, quiet, torchrun

EVAL = dict(eval_samples=4, max_new_tokens=48)
# voting and pass@k read the sampled answers only; the verifier's scores (and so best-of-N,
# weighted votes and the verifier's metrics) come from another batch shape: equal to ~1e-6
SCORE_TOLERANCE = dict(rel=1e-5, abs=1e-7)


def assert_same_evaluation(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key.startswith(("pass@", "majority@", "num_")) or value is None:  # None: one class only
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, **SCORE_TOLERANCE), key


COMPARE = dict(steps=2, prompts_per_step=2, group_size=4, micro_batch=8, eval_problems=5, checkpoint_every=1,
               compare=True, dist_timeout=60, **EVAL)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """(OUT of a comparison at world size 2, OUT of the same comparison in one process)."""
    root = tmp_path_factory.mktemp("dcompare")
    two, one = root / "ws2", root / "ws1"
    proc = torchrun(TrainConfig(out=str(two), **COMPARE), root)
    train_mod.train(TrainConfig(out=str(one), **COMPARE), log=quiet)
    finish(proc)
    return two, one


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_a_comparison_at_world_size_2_equals_one_process(compared):
    two, one = compared
    got, want = summary_of(two), summary_of(one)
    assert got.keys() == want.keys() and got["time"].keys() == want["time"].keys()
    for role in ("base_method", "rlv", "efficiency", "bootstrap"):
        assert got[role].keys() == want[role].keys() == {"test", "hard"}, role
    for split in ("test", "hard"):
        assert_same_evaluation(got["base_model"][split], want["base_model"][split])
        for role in ("base_method", "rlv"):
            assert (got[role][split]["num_problems"], got[role][split]["num_samples"]) == (5, 4)
    assert json.loads((two / BASE_MODEL_FILE).read_text()) == got["base_model"]
    for out in (two, two / BASE_DIR):
        assert [m["step"] for m in metrics(out)] == [1, 2] and (out / "final" / "model.safetensors").is_file()
    assert (two / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary_of(two / BASE_DIR)["eval"] == got["base_method"]
    for run in (".", BASE_DIR):  # the first step: the same start, seed and problems
        assert_same_step(metrics(two / run)[0], metrics(one / run)[0])
    assert metrics(two / BASE_DIR)[0]["loss/verifier"] == 0.0 < metrics(two)[0]["loss/verifier"]


def test_the_split_evaluation_equals_one_process(compared):
    two, _ = compared
    config, summary = TrainConfig(**COMPARE), summary_of(two)
    assert 0 < summary["rlv"]["test"]["pass@1"] < 1 and summary["rlv"]["test"]["verifier_auc"] is not None
    with Grader() as grader:
        for role, folder in (("rlv", two), ("base_method", two / BASE_DIR)):
            model, tokenizer = load_model(folder / "final", device=torch.device("cpu"))
            sampler = Sampler(model, tokenizer, verify_prompt=config.resolved_verify_prompt())
            for split, problems in report.eval_problems(config).items():
                assert_same_evaluation(summary[role][split], report.evaluate(sampler, problems, config, grader, seed=1))


def test_resume_at_world_size_2_reuses_both_runs(compared, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(compared[0], out)
    log = finish(torchrun(TrainConfig(out=str(out), resume=True, **COMPARE), tmp_path))
    assert f"base method: reusing {out / BASE_DIR / 'final'}" in log
    got, want = summary_of(out), summary_of(compared[0])
    for role in ("base_model", "base_method", "rlv", "bootstrap"):
        assert got[role] == want[role], role  # the same models split over the same ranks: the same numbers


def test_a_lone_runs_table_at_world_size_2_is_one_process_evaluation(tmp_path):
    """--no-compare: the start's and the final model's evaluations, split, against one process's;
    one problem per split: rank 0's share is empty."""
    config = TrainConfig(out=str(tmp_path / "run"), **{**COMPARE, "steps": 1, "eval_problems": 1, "compare": False})
    finish(torchrun(config, tmp_path))
    summary = summary_of(Path(config.out))
    with Grader() as grader:
        for key, folder, num_samples in (("warm_start", BASE_MODEL_DIR, train_mod.start_eval_samples(config)),
                                         ("eval", Path(config.out) / "final", None)):
            model, tokenizer = load_model(folder, device=torch.device("cpu"))
            sampler = Sampler(model, tokenizer, verify_prompt=config.resolved_verify_prompt())
            for split, problems in report.eval_problems(config).items():
                want = report.evaluate(sampler, problems, config, grader, seed=1, num_samples=num_samples)
                assert_same_evaluation(summary[key][split], want)
