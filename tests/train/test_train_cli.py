"""The edge of `python -m rlvfast.train`, without training: one-line errors with exit 2, finite
float options, config files (errors naming the file, YAML values coerced), option aliases,
warnings for options that do nothing, --help, and the run directory's lock and rules."""
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import rlvfast
from rlvfast.train import run_dir
from rlvfast.cli import UserError
from rlvfast.train.config import TrainConfig, coerce, parse_config, resume_differences

FLOAT_OPTIONS = [f.name for f in fields(TrainConfig) if f.type == "float"]


def child_env() -> dict:
    """The environment of a child Python that imports the same rlvfast as this test (PYTHONPATH first)."""
    root = str(Path(rlvfast.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def test_inf_lr_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "rlvfast.train", "--lr", "inf"], capture_output=True, text=True,
                          timeout=120, env=child_env())
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["rlvfast.train: error: --lr must be a finite number > 0, got inf"]
    assert proc.stdout == ""


@pytest.mark.parametrize("name", FLOAT_OPTIONS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_option_must_be_finite(name, value):
    assert len(FLOAT_OPTIONS) == 10  # verifier_coef clip_low clip_high kl_coef lora_alpha lr weight_decay ...
    flag = "--" + name.replace("_", "-")
    with pytest.raises(UserError, match=f"^{flag} must be a finite number"):
        parse_config([f"{flag}={value}"])  # "=": argparse reads a bare -inf as an option


def test_a_user_error_from_main_is_one_line(tmp_path, capsys):
    from rlvfast.train.loop import main
    (tmp_path / "bad.jsonl").write_text('{"question": "1+1?"}\n')
    assert main(["--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "run")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"rlvfast.train: error: --data: {tmp_path / 'bad.jsonl'}:line 1: ")
    assert main(["--reward", "no_such_module_xyz:f", "--out", str(tmp_path / "run")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("rlvfast.train: error: --reward 'no_such_module_xyz:f': cannot import")


# ----------------------------------------------------------------------------- config files
def test_broken_json_config_names_the_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"steps": 3,\n "lr": }')
    with pytest.raises(UserError, match=f"config file {path}: bad JSON at line 2, column 8"):
        parse_config(["--config", str(path)])


def test_broken_yaml_config_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 3\nlr: [1e-6\n")
    with pytest.raises(UserError, match=f"config file {path}: bad YAML at line 3"):
        parse_config(["--config", str(path)])


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        parse_config(["--config", str(tmp_path / "nope.yaml")])


def test_yaml_values_are_coerced_to_the_field_type(tmp_path):
    path = tmp_path / "run.yaml"
    # YAML 1.1 reads 1e-6 (no dot) as the string '1e-6'
    path.write_text("lr: 1e-6\nsteps: '12'\nverifier_coef: 1\neval_splits: test\nresume: 'false'\n")
    cfg = parse_config(["--config", str(path)])
    assert (cfg.lr, cfg.steps, cfg.verifier_coef, cfg.eval_splits, cfg.resume) == (1e-6, 12, 1.0, ["test"], False)
    assert type(cfg.verifier_coef) is float and type(cfg.steps) is int


@pytest.mark.parametrize("text, message", [
    ("lr: fast\n", "option 'lr': expected a float, got 'fast'"),
    ("steps: 2.5\n", "option 'steps': expected an int, got 2.5"),
    ("group-size: true\n", "option 'group-size': expected a int, got True"),
    ("resume: 1\n", "option 'resume': expected true or false, got 1"),
    ("eval_splits: [1, 2]\n", "option 'eval_splits': expected a list of strings, got [1, 2]"),
])
def test_a_bad_config_value_names_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as error:
        parse_config(["--config", str(path)])
    assert str(error.value) == f"config file {path}: {message}"


def test_coerce_keeps_none_for_optional_fields():
    assert coerce("str | None", None) is None
    assert coerce("str", 7) == "7"
    assert coerce("int", "1e3") == 1000


# ----------------------------------------------------------------------------- aliases, warnings, --help
def test_eval_spellings_are_aliases(tmp_path):
    cfg = parse_config(["--max-tokens", "12", "--grade-timeout", "2"])
    assert (cfg.max_new_tokens, cfg.grader_timeout) == (12, 2.0)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"max-tokens": 9, "grade_timeout": 3}))
    cfg = parse_config(["--config", str(path)])
    assert (cfg.max_new_tokens, cfg.grader_timeout) == (9, 3.0)
    assert "max_tokens" not in cfg.to_dict()  # checkpoints keep the field names


def test_group_size_1_warns():
    with pytest.warns(UserWarning, match="--group-size 1: .* no gradient"):
        TrainConfig(group_size=1)


def test_eval_options_with_real_data_warn(recwarn):
    with pytest.warns(UserWarning, match="--eval-problems: the end-of-run table is for --data synthetic only"):
        parse_config(["--data", "problems.jsonl", "--eval-problems", "50"])
    recwarn.clear()
    parse_config(["--data", "problems.jsonl"])  # the default is not a request
    parse_config(["--eval-problems", "50"])  # synthetic: the table is made
    # --resume reads every option back from the checkpoint: those are not requests either
    saved = TrainConfig(data="problems.jsonl").to_dict()
    parse_config(["--resume", "--out", "run"], saved_config=lambda out: saved)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_resume_and_overwrite_contradict():
    with pytest.raises(UserError, match="--resume and --overwrite"):
        parse_config(["--resume", "--overwrite"])


def test_help_is_accurate(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert ".jsonl, .json (an array of records) or .parquet file (.parquet needs pip install 'rlvfast[parquet]')" in text
    assert ("--overwrite, --no-overwrite start afresh in a non-empty OUT: first delete the run files there "
            "(metrics.jsonl, checkpoints/, latest, final/, summary.json); other files stay") in text
    assert "--max-new-tokens MAX_NEW_TOKENS, --max-tokens MAX_NEW_TOKENS" in text
    assert "--grader-timeout GRADER_TIMEOUT, --grade-timeout GRADER_TIMEOUT" in text
    assert "--log-every LOG_EVERY" in text
    assert "NOTES.md" not in text and "beat 150" not in text  # no session history


def test_resume_differences_name_only_what_changes_the_run():
    saved = TrainConfig().to_dict()
    now = TrainConfig(lr=1e-3, steps=600, eval_problems=0, micro_batch=8, algo="drgrpo")
    assert resume_differences(saved, now) == ["--algo drgrpo (checkpoint: grpo)",
                                              "--loss-agg constant (checkpoint: token-mean)",
                                              "--lr 0.001 (checkpoint: 0.0001)"]
    del saved["lr"]  # an older checkpoint without the field: not compared
    assert resume_differences(saved, TrainConfig(lr=1e-3)) == []


# ----------------------------------------------------------------------------- the run directory
def test_prepare_fresh_resume_overwrite(tmp_path):
    out = tmp_path / "run"
    run_dir.prepare(out, resume=False, overwrite=False)  # absent: fine
    out.mkdir()
    (out / ".lock").write_text("123\n")
    run_dir.prepare(out, resume=False, overwrite=False)  # only a lock file: still empty
    for name in ("metrics.jsonl", "summary.json", "latest", "notes.txt", ".latest-x1"):
        (out / name).write_text("x")
    for name in ("checkpoints/step-000001", "final", ".tmp-final-abc"):
        (out / name).mkdir(parents=True)
    with pytest.raises(UserError, match=r"is not empty \(\.latest-x1, \.tmp-final-abc, checkpoints, final, "
                                        r"latest and 3 more\)"):
        run_dir.prepare(out, resume=False, overwrite=False)
    run_dir.prepare(out, resume=True, overwrite=False)  # resume: the checkpoint decides
    run_dir.prepare(out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]


LOCK_HOLDER = """
import sys
from rlvfast.train.run_dir import hold_lock
with hold_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_the_lock_names_the_holder_and_dies_with_it(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert holder.stdout.readline() == "locked\n"
        assert (out / ".lock").read_text() == f"{holder.pid}\n"
        with pytest.raises(UserError, match=rf"in use by another run \(pid {holder.pid}, holding "):
            with run_dir.hold_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with run_dir.hold_lock(out):  # the kernel dropped the dead holder's lock; the stale file does not block
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"


def test_an_out_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(UserError, match=r"--out .*run: cannot create .*\.lock \(File exists\)"):
        with run_dir.hold_lock(tmp_path / "run"):
            pass
