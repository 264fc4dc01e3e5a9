"""The trainer's --data DIR with --data-split and the column options, through its command on a
micro model (1 layer, hidden 32): the rollouts come from the split and columns asked for, the
options round-trip through the checkpoint for --resume (and may not change there), a bad
column or split is one line naming the ones there, and the options are refused where they
would do nothing."""
import importlib
import sys

import pytest

from rlvfast.cli import UserError
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import loop as train_mod
from rlvfast.train.config import TrainConfig

# records what each rollout was drawn from; the reward varies even for a random model
REWARD_MODULE = '''
SEEN = []

def record(prompts, completions, completion_ids, answer, problem, id, **columns):
    SEEN.extend(zip(id, problem, answer))
    return [float(sum(ids) % 2 == 0) for ids in completion_ids]
'''
TRAIN = [{"q": "Compute 2+3.", "a": "5"}, {"q": "Compute 4*2.", "a": "8"}, {"q": "Compute 9-7.", "a": "2"}]
TEST = [{"q": "Compute 1+1.", "a": "2"}, {"q": "Compute 3*3.", "a": "9"}]


@pytest.fixture()
def data_dir(tmp_path):
    datasets = pytest.importorskip("datasets")  # in the `test` and `datasets` extras
    datasets.disable_progress_bars()
    path = tmp_path / "qa"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(TRAIN),
                          "test": datasets.Dataset.from_list(TEST)}).save_to_disk(path)
    return path


@pytest.fixture()
def recorder(tmp_path, monkeypatch):
    (tmp_path / "rlvfast_test_record.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("rlvfast_test_record")  # the trainer imports this same module object
    sys.modules.pop("rlvfast_test_record", None)  # a fresh SEEN for the next test


def _argv(micro_dir, out):
    return ["--model", str(micro_dir), "--out", str(out), "--prompts-per-step", "2", "--group-size", "2",
            "--max-tokens", "8", "--micro-batch", "4", "--verify-prompt", "\nOK?\n",
            "--checkpoint-every", "1", "--lr", "1e-2", "--warmup", "0", "--lr-schedule", "constant"]


def test_a_split_and_columns_train_and_resume(micro_dir, data_dir, recorder, tmp_path, capsys):
    out = tmp_path / "run"
    options = ["--data", str(data_dir), "--data-split", "train", "--problem-field", "q", "--answer-field", "a",
               "--reward", "rlvfast_test_record:record"]
    assert train_mod.main(_argv(micro_dir, out) + options + ["--steps", "1"]) == 0
    train_rows = {(f"train-{i}", row["q"], row["a"]) for i, row in enumerate(TRAIN, start=1)}
    assert len(recorder.SEEN) == 4 and set(recorder.SEEN) <= train_rows  # 2 problems x 2 samples, train only
    assert len(set(recorder.SEEN)) == 2
    saved = ckpt.load_trainer_state(ckpt.latest_checkpoint(out))["config"]
    assert (saved["data"], saved["data_split"], saved["problem_field"], saved["answer_field"], saved["id_field"]) \
        == (str(data_dir), "train", "q", "a", None)

    capsys.readouterr()
    assert train_mod.main(["--out", str(out), "--resume", "--steps", "3", "--data-split", "test"]) == 2
    assert "--data-split test (checkpoint: train)" in capsys.readouterr().err
    assert len(recorder.SEEN) == 4  # refused before any step

    assert train_mod.main(["--out", str(out), "--resume", "--steps", "2"]) == 0  # the saved options, not repeated
    assert len(recorder.SEEN) == 8 and set(recorder.SEEN) <= train_rows
    assert ckpt.load_trainer_state(ckpt.latest_checkpoint(out))["step"] == 2


@pytest.mark.parametrize("options, message", [
    (["--problem-field", "question"], "{train}: no column 'question' (mapped to 'problem'); columns: ['q', 'a']"),
    (["--data-split", "validation", "--problem-field", "q"], "{data}: no split 'validation'; splits: ['train', 'test']"),
])
def test_a_bad_column_or_split_is_one_line(micro_dir, data_dir, tmp_path, capsys, options, message):
    argv = _argv(micro_dir, tmp_path / "run") + ["--data", str(data_dir), "--steps", "1"] + options
    assert train_mod.main(argv) == 2
    expected = "rlvfast.train: error: --data: " + message.format(train=data_dir / "train", data=data_dir)
    assert capsys.readouterr().err.splitlines() == [expected]
    assert not (tmp_path / "run").exists()  # it failed before the run directory was made


def test_data_options_are_checked():
    with pytest.raises(UserError, match=r"--data-split, --answer-field: for a --data file or directory; "
                                        r"--data synthetic has no splits or columns"):
        TrainConfig(data_split="train", answer_field="a")
    with pytest.raises(UserError, match=r"--problem-field must be a non-empty name, got ' '"):
        TrainConfig(data="x.jsonl", problem_field=" ")
    config = TrainConfig(data="x.jsonl", id_field="uid")
    assert (config.data_split, config.problem_field, config.answer_field, config.id_field) == (None, None, None, "uid")
