"""The trainer's comparison mode (rlvfast/train/compare.py) on a micro model (1 layer, hidden 32,
8 new tokens, 2 steps, 3 held-out problems x 4 samples): every summary key, both run
directories, the PNG, the same start for both runs, --resume and --overwrite, and the
--compare switch (auto, explicit, refused without a table, --no-compare)."""
import json
import shutil

import pytest

from rlvfast.cli import UserError
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import loop as train_mod
from rlvfast.train import run_dir
from rlvfast.train.config import TrainConfig, parse_config

SPLITS = ("test", "hard")
KS = ("1", "2", "4")
SHORT_KEYS = ("pass@1", "verifier_balanced_accuracy", "verifier_auc")


def config(micro_dir, out, **overrides) -> TrainConfig:
    values = dict(model=str(micro_dir), out=str(out), steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8,
                  micro_batch=5, eval_problems=3, eval_samples=4, verify_prompt="\nOK?\n", checkpoint_every=1,
                  lr=1e-2, warmup=0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def compared(micro_dir, tmp_path_factory):
    """One comparison run: (OUT, its summary, its log lines)."""
    out = tmp_path_factory.mktemp("compare") / "run"
    lines = []
    summary = train_mod.train(config(micro_dir, out), log=lines.append)
    return out, summary, lines


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_unit_or_undefined(block: dict, key: str) -> None:
    """A ratio in [0, 1]; the verifier's metrics are None exactly when the samples hold one
    class only (pass@1, the mean of all samples' correctness, is 0 or 1)."""
    value = block[key]
    if key.startswith("verifier") and block["pass@1"] in (0.0, 1.0):
        assert value is None, key
    else:
        assert isinstance(value, float) and 0.0 <= value <= 1.0, (key, value)


def test_the_summary_has_every_key(compared):
    out, summary, _ = compared
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["wall_seconds"] > 0
    for split in SPLITS:
        for key in SHORT_KEYS:
            assert_unit_or_undefined(summary["base_model"][split], key)
        for role in ("base_method", "rlv"):
            block = summary[role][split]
            for key in SHORT_KEYS + tuple(f"{m}@{k}" for m in ("majority", "best_of_n", "weighted") for k in KS):
                assert_unit_or_undefined(block, key)
            assert (block["num_problems"], block["num_samples"]) == (3, 4)
        assert [row["k"] for row in summary["efficiency"][split]] == [1, 2, 4]
        b = summary["bootstrap"][split]
        assert b["estimate"] == pytest.approx(summary["rlv"][split]["weighted@4"]
                                              - summary["base_method"][split]["majority@4"], abs=1e-12)
        assert b["low"] <= b["estimate"] <= b["high"] and (b["num_resamples"], b["num_problems"]) == (2000, 3)
    assert set(summary["time"]) == {"sampling", "grading", "update", "eval", "other"}
    assert all(v >= 0 for v in summary["time"].values()) and summary["time"]["eval"] > 0
    steps = read_metrics(out) + read_metrics(out / "base_method")
    assert summary["time"]["update"] == pytest.approx(sum(m["time/update"] for m in steps))


def test_both_run_directories_and_the_plot(compared):
    out, summary, lines = compared
    for run in (out, out / "base_method"):
        assert (run / "final" / "model.safetensors").is_file()
        assert [m["step"] for m in read_metrics(run)] == [1, 2]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    base = json.loads((out / "base_method" / "summary.json").read_text())
    assert base["config"]["verifier_coef"] == 0.0 and base["config"]["out"] == str(out / "base_method")
    assert base["config"]["compare"] is False and base["eval"] == summary["base_method"]
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(out / "base_method"))
    assert state["config"]["verifier_coef"] == 0.0 and state["step"] == 2
    assert summary["config"]["verifier_coef"] == TrainConfig().verifier_coef > 0
    table = "\n".join(lines)
    assert "== test: 3 held-out problems, 4 samples each ==" in table
    assert "RL^V weighted@4 - base method majority@4: " in table


def test_both_runs_start_from_the_same_weights(compared):
    """Same start, seed and problems: the first step samples the same rollouts (reward, length
    and the sampler's entropy agree); only RL^V has a verifier loss."""
    out, _, _ = compared
    rlv, base = read_metrics(out)[0], read_metrics(out / "base_method")[0]
    for key in ("reward", "completions/mean_length", "completions/clipped_ratio", "entropy", "num_train_tokens"):
        assert rlv[key] == base[key], key
    assert base["loss/verifier"] == 0.0 and rlv["loss/verifier"] > 0


def test_resume_reuses_the_base_method_and_extends_both(compared, tmp_path, micro_dir):
    out = tmp_path / "run"
    shutil.copytree(compared[0], out)
    lines = []
    summary = train_mod.train(config(micro_dir, out, resume=True), log=lines.append)
    assert f"base method: reusing {out / 'base_method' / 'final'}" in lines
    assert summary["base_model"] == compared[1]["base_model"]  # read back from base_model.json
    assert summary["rlv"] == compared[1]["rlv"] and summary["base_method"] == compared[1]["base_method"]
    # more steps: the base method's final is not for them, so it resumes from its checkpoint too
    train_mod.train(config(micro_dir, out, resume=True, steps=3), log=lines.append)
    for run in (out, out / "base_method"):
        assert [m["step"] for m in read_metrics(run)] == [1, 2, 3]


def test_resume_after_the_base_method_starts_rl_v(compared, tmp_path, micro_dir):
    """The process ended after the base method, before RL^V's first checkpoint."""
    out = tmp_path / "run"
    shutil.copytree(compared[0], out)
    for name in ("checkpoints", "latest", "final", "metrics.jsonl", "summary.json"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    summary = train_mod.train(config(micro_dir, out, resume=True), log=lambda line: None)
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    assert summary["rlv"] == compared[1]["rlv"]  # the same run again: seeded


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, micro_dir):
    with pytest.raises(UserError, match="--resume: no checkpoint to resume from in"):
        train_mod.train(config(micro_dir, tmp_path / "empty", resume=True), log=lambda line: None)
    assert not (tmp_path / "empty").exists()


def test_overwrite_deletes_both_runs(tmp_path):
    out = tmp_path / "run"
    for name in ("base_method/final", "final", "checkpoints"):
        (out / name).mkdir(parents=True)
    for name in ("base_model.json", "comparison.png", "summary.json", "notes.txt"):
        (out / name).write_text("x")
    run_dir.prepare(out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------- the switch
def test_compare_is_on_by_default_exactly_with_a_table_and_lambda(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    assert TrainConfig().is_comparison
    assert not TrainConfig(eval_problems=0).is_comparison
    assert not TrainConfig(verifier_coef=0.0).is_comparison
    assert not TrainConfig(data=str(data)).is_comparison
    assert not TrainConfig(compare=False).is_comparison
    assert parse_config(["--compare"]).compare is True
    assert parse_config(["--no-compare"]).compare is False and parse_config([]).compare is None


def test_compare_without_a_table_is_a_user_error(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    with pytest.raises(UserError, match=r"^--compare needs the end-of-run table .*--data .*problems.jsonl.*"
                                        r"python -m rlvfast.eval .*--baseline"):
        parse_config(["--data", str(data), "--compare"])
    with pytest.raises(UserError, match=r"^--compare needs .*--verifier-coef > 0 \(got 0.0\)"):
        TrainConfig(verifier_coef=0.0, compare=True)


def test_no_compare_is_one_run_with_todays_table(tmp_path, micro_dir):
    out = tmp_path / "run"
    lines = []
    summary = train_mod.train(config(micro_dir, out, compare=False, eval_problems=2, eval_samples=2),
                              log=lines.append)
    assert not (out / "base_method").exists() and not (out / "comparison.png").exists()
    assert set(summary["eval"]) == set(SPLITS) and "rlv" not in summary and "bootstrap" not in summary
    assert any(line.startswith("== test: 2 held-out problems, 2 samples each ==\npass@1: warm start ")
               for line in lines)
