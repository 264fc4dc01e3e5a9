"""`python -m rlvfast.eval --data DIR` with --data-split and the column options, on a random
tiny model: the samples come from the split (test by default) and columns asked for; a bad
column or split is one line naming the ones there; the options are refused for synthetic data."""
import json

import pytest

from rlvfast.eval import run as rlv_eval

ROWS = {"train": [{"q": "Compute 2+3.", "a": "5", "key": "tr-a"}, {"q": "Compute 4*2.", "a": "8", "key": "tr-b"},
                  {"q": "Compute 9-7.", "a": "2", "key": "tr-c"}],
        "test": [{"q": "Compute 1+1.", "a": "2", "key": "te-a"}, {"q": "Compute 3*3.", "a": "9", "key": "te-b"}]}


@pytest.fixture()
def data_dir(tmp_path):
    datasets = pytest.importorskip("datasets")  # in the `test` and `datasets` extras
    datasets.disable_progress_bars()
    path = tmp_path / "qa"
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split, rows in ROWS.items()}).save_to_disk(path)
    return path


def _sampled(out):
    """(problem id, gold) of each sample in OUT/samples.jsonl, in order."""
    return [(r["problem_id"], r["gold"]) for r in map(json.loads, (out / "samples.jsonl").read_text().splitlines())]


def _argv(model_dir, data_dir, out):
    return ["--model", str(model_dir), "--data", str(data_dir), "--out", str(out), "--n", "2", "--max-tokens", "4",
            "--trials", "2", "--problem-field", "q", "--answer-field", "a"]


def test_the_test_split_by_default_and_another_on_request(tmp_path, tiny_model_dir, data_dir):
    results = rlv_eval.run(_argv(tiny_model_dir, data_dir, tmp_path / "test"))
    assert _sampled(tmp_path / "test") == [("test-1", "2"), ("test-1", "2"), ("test-2", "9"), ("test-2", "9")]
    assert results["verifier"]["num_samples"] == 4
    rlv_eval.run(_argv(tiny_model_dir, data_dir, tmp_path / "train") + ["--data-split", "train", "--id-field", "key"])
    assert _sampled(tmp_path / "train") == [(key, gold) for key, gold in [("tr-a", "5"), ("tr-b", "8"), ("tr-c", "2")]
                                            for _ in range(2)]


@pytest.mark.parametrize("options, message", [
    (["--answer-field", "gold"], "{test}: no column 'gold' (mapped to 'answer'); columns: ['q', 'a', 'key']"),
    (["--data-split", "dev"], "{data}: no split 'dev'; splits: ['train', 'test']"),
])
def test_a_bad_column_or_split_is_one_line(tmp_path, tiny_model_dir, data_dir, capsys, options, message):
    out = tmp_path / "out"
    assert rlv_eval.command(_argv(tiny_model_dir, data_dir, out) + options) == 2
    expected = "rlvfast.eval: error: --data: " + message.format(test=data_dir / "test", data=data_dir)
    assert capsys.readouterr().err.splitlines() == [expected]
    assert not out.exists()  # a bad --data leaves nothing behind


@pytest.mark.parametrize("argv, message", [
    (["--data", "synthetic:test", "--data-split", "test"],
     "--data-split: for a --data file or directory; synthetic data has no columns, and its split is "
     "--data synthetic:SPLIT"),
    (["--data", "synthetic", "--problem-field", "q", "--id-field", "k"], "--problem-field, --id-field: for a --data"),
    (["--data", "nowhere", "--data-split", "test"], "--data 'nowhere': no such file or directory"),
    (["--data", "synthetic", "--answer-field", ""], "--answer-field '': empty"),
])
def test_options_that_cannot_apply_are_refused(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        rlv_eval.run(["--model", str(tmp_path), "--out", str(tmp_path / "out"), *argv])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"rlvfast.eval: error: {message}")


def test_a_rerun_with_another_split_or_column_is_refused_not_mixed(tmp_path, tiny_model_dir, data_dir, capsys):
    """The samples in OUT were made from one split and columns: a rerun into OUT with another
    split is refused (RUN_KEYS), rather than reusing samples whose golds came from elsewhere."""
    out = tmp_path / "out"
    rlv_eval.run(_argv(tiny_model_dir, data_dir, out))
    assert rlv_eval.command(_argv(tiny_model_dir, data_dir, out) + ["--data-split", "train"]) == 2
    assert "data_split=None there, 'train' now" in capsys.readouterr().err
