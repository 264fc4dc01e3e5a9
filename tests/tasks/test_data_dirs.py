"""`load_problems` on directories: `datasets` save_to_disk directories (a Dataset, a
DatasetDict) and hub-style folders of jsonl/parquet shards; which split is read; columns of
other schemas through `fields` (`column_fields`); errors that name the splits and columns there."""
import json
import sys

import pytest

from rlvfast.tasks.problems import DataError, column_fields, load_problems
from rlvfast.tasks.sources import file_split

GSM8K = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
         {"question": "Ann reads 1,000 pages twice. How many?", "answer": "2 * 1000 = 2000\n#### 2,000"}]
MATH = [{"problem": "What is $1/2 + 1/4$?", "solution": "It is $\\boxed{\\frac{3}{4}}$.", "level": "Level 1"},
        {"problem": "Solve $x + 1 = 3$.", "solution": "So $x = \\boxed{2}$.", "level": "Level 1"}]
CUSTOM = [{"prompt": "Compute 2+3.", "target": "5", "uid": "a"}, {"prompt": "Compute 4*2.", "target": "8", "uid": "b"},
          {"prompt": "Compute 9-7.", "target": "2", "uid": "c"}]


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _write_parquet(path, rows):
    pa = pytest.importorskip("pyarrow")  # in the `test` and `parquet` extras
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def datasets():
    datasets = pytest.importorskip("datasets")  # in the `test` and `datasets` extras
    datasets.disable_progress_bars()
    return datasets


def _answers(problems):
    return [(p.id, p.answer) for p in problems]


# --- datasets save_to_disk directories ---

def test_a_saved_dataset_without_a_split_name(tmp_path, datasets):
    datasets.Dataset.from_list(GSM8K).save_to_disk(tmp_path / "gsm")
    problems = load_problems(tmp_path / "gsm")
    assert problems.format == "gsm8k" and problems.split is None
    assert _answers(problems) == [("gsm-1", "7"), ("gsm-2", "2000")]  # ids: the folder's name and the row
    assert problems[0].problem == GSM8K[0]["question"] and problems[0].meta["solution"] == "3 + 4 = 7"
    assert _answers(load_problems(tmp_path / "gsm", default_split="test")) == _answers(problems)  # its only split
    with pytest.raises(DataError, match=r"gsm: split 'train' asked for, but this is one Dataset with no split name"):
        load_problems(tmp_path / "gsm", split="train")


def test_a_saved_dataset_with_a_split_name(tmp_path, datasets):
    datasets.Dataset.from_list(MATH, split="test").save_to_disk(tmp_path / "math")
    problems = load_problems(tmp_path / "math", split="test")
    assert problems.split == "test" and problems.format == "math"
    assert _answers(problems) == [("test-1", "\\frac{3}{4}"), ("test-2", "2")]
    with pytest.raises(DataError, match=r"math: no split 'train'; splits: \['test'\]"):
        load_problems(tmp_path / "math", split="train")


def test_a_saved_dataset_dict_reads_one_split(tmp_path, datasets):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K),
                          "test": datasets.Dataset.from_list(GSM8K[1:])}).save_to_disk(tmp_path / "dd")
    train = load_problems(tmp_path / "dd")  # default_split="train"
    assert train.split == "train" and _answers(train) == [("train-1", "7"), ("train-2", "2000")]
    assert train.path == tmp_path / "dd"
    test = load_problems(tmp_path / "dd", default_split="test")  # what eval asks for
    assert test.split == "test" and _answers(test) == [("test-1", "2000")]
    assert _answers(load_problems(tmp_path / "dd", split="test", default_split="train")) == _answers(test)
    with pytest.raises(DataError, match=r"dd: no split 'validation'; splits: \['train', 'test'\]"):
        load_problems(tmp_path / "dd", split="validation")


def test_a_dataset_dict_without_the_default_split(tmp_path, datasets):
    one = tmp_path / "one"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(MATH)}).save_to_disk(one)
    assert load_problems(one).split == "validation"  # the only split
    two = tmp_path / "two"
    datasets.DatasetDict({"dev": datasets.Dataset.from_list(MATH),
                          "holdout": datasets.Dataset.from_list(MATH)}).save_to_disk(two)
    with pytest.raises(DataError, match=r"two: no split 'train' and 2 others, \['dev', 'holdout'\]; pick one"):
        load_problems(two)


def test_columns_of_another_schema(tmp_path, datasets):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(CUSTOM)}).save_to_disk(tmp_path / "custom")
    fields = column_fields(problem="prompt", answer="target", id="uid")
    assert fields == {"problem": "prompt", "answer": "target", "id": "uid"}
    problems = load_problems(tmp_path / "custom", fields=fields)
    assert [(p.id, p.problem, p.answer) for p in problems] == [
        ("a", "Compute 2+3.", "5"), ("b", "Compute 4*2.", "8"), ("c", "Compute 9-7.", "2")]
    assert column_fields(answer="target") == {"answer": "target"}  # None: our own key


def test_a_bad_column_names_the_columns_there(tmp_path, datasets):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(CUSTOM)}).save_to_disk(tmp_path / "custom")
    with pytest.raises(DataError) as error:
        load_problems(tmp_path / "custom", fields=column_fields(problem="question", answer="target"))
    assert str(error.value) == (f"{tmp_path / 'custom' / 'train'}: no column 'question' (mapped to 'problem'); "
                                f"columns: ['prompt', 'target', 'uid']")
    with pytest.raises(DataError, match=r"no column 'q' \(mapped to 'problem'\), 'a' \(mapped to 'answer'\); "
                                        r"columns: \['prompt', 'target', 'uid'\]"):
        load_problems(tmp_path / "custom", fields=column_fields(problem="q", answer="a"))


def test_saved_directory_without_datasets_names_the_extra(tmp_path, datasets, monkeypatch):
    datasets.Dataset.from_list(GSM8K).save_to_disk(tmp_path / "gsm")
    monkeypatch.setitem(sys.modules, "datasets", None)  # None in sys.modules: the import fails
    with pytest.raises(DataError, match=r"gsm: reading a datasets save_to_disk directory needs the datasets "
                                        r"library: pip install 'rlvfast\[datasets\]'"):
        load_problems(tmp_path / "gsm")


# --- hub-style folders ---

@pytest.mark.parametrize("name, split", [
    ("train-00000-of-00002.parquet", "train"), ("test.jsonl", "test"), ("gsm8k_test.jsonl", "test"),
    ("validation-00003-of-00004-1a2b3c.parquet", "validation"),  # the hub's hashed shard names
    ("sft_train-00000-of-00001.parquet", "sft_train"),  # any split name in the shard pattern
    ("dev.json", "validation"), ("training.jsonl", "train"), ("aime24.jsonl", None), ("train_test.jsonl", None),
    ("contest.jsonl", None),  # 'test' inside a word is not a split
])
def test_file_split(name, split):
    assert file_split(name) == split


def test_hub_folder_reads_the_shards_of_a_split_in_name_order(tmp_path):
    root = tmp_path / "hub"
    # written out of order: read in name order, 00000 first
    _write_parquet(root / "data" / "train-00001-of-00002.parquet", [CUSTOM[2]])
    _write_parquet(root / "data" / "train-00000-of-00002.parquet", CUSTOM[:2])
    _write_jsonl(root / "test.jsonl", [CUSTOM[0] | {"uid": "t"}])
    (root / "README.md").write_text("# a dataset card\n")
    (root / "dataset_infos.json").write_text("{}")  # metadata beside the data, not rows
    fields = column_fields(problem="prompt", answer="target", id="uid")
    train = load_problems(root, fields=fields)
    assert train.split == "train" and _answers(train) == [("a", "5"), ("b", "8"), ("c", "2")]
    test = load_problems(root, fields=fields, default_split="test")
    assert test.split == "test" and _answers(test) == [("t", "5")]
    with pytest.raises(DataError, match=r"hub: no split 'validation'; splits: \['test', 'train'\]"):
        load_problems(root, fields=fields, split="validation")


def test_hub_folder_ids_and_messages_name_the_shard(tmp_path):
    root = tmp_path / "hub"
    _write_jsonl(root / "data" / "train-00000-of-00002.jsonl", GSM8K)
    _write_jsonl(root / "data" / "train-00001-of-00002.jsonl", [GSM8K[0], {"question": "no answer"}])
    with pytest.raises(DataError) as error:
        load_problems(root)
    shard = root / "data" / "train-00001-of-00002.jsonl"
    assert str(error.value) == f"{shard}:line 2: missing field 'answer'; fields present: ['question']"
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        problems = load_problems(root, skip_bad=True)
    assert _answers(problems) == [("train-00000-of-00002-1", "7"), ("train-00000-of-00002-2", "2000"),
                                  ("train-00001-of-00002-1", "7")]


def test_hub_folder_split_folders_and_unnamed_files(tmp_path):
    root = tmp_path / "by_folder"
    _write_jsonl(root / "data" / "train" / "part0.jsonl", MATH)
    _write_jsonl(root / "data" / "test" / "part0.jsonl", MATH[:1])
    assert [len(load_problems(root)), len(load_problems(root, split="test"))] == [2, 1]
    plain = tmp_path / "plain"
    _write_jsonl(plain / "aime.jsonl", [{"problem": "p", "answer": 7}])
    assert load_problems(plain).split == "train" and load_problems(plain, default_split="test").split == "train"
    _write_jsonl(plain / "test.jsonl", [{"problem": "p", "answer": 7}])
    with pytest.raises(DataError, match=r"plain: file\(s\) \['aime.jsonl'\] name no split while others do "
                                        r"\(\['test'\]\)"):
        load_problems(plain)


def test_a_folder_without_data_names_its_folders(tmp_path):
    _write_parquet(tmp_path / "gsm8k" / "main" / "train-00000-of-00001.parquet", GSM8K)
    with pytest.raises(DataError, match=r"gsm8k: no data files \(.jsonl, .json, .parquet\) at its top or under data/"
                                        r".*its folders: \['main'\] \(pass one as the data\)"):
        load_problems(tmp_path / "gsm8k")
    assert _answers(load_problems(tmp_path / "gsm8k" / "main")) == [("train-00000-of-00001-1", "7"),
                                                                   ("train-00000-of-00001-2", "2000")]


def test_one_file_has_no_splits_and_its_columns_are_checked(tmp_path):
    path = tmp_path / "custom.parquet"
    _write_parquet(path, CUSTOM)
    with pytest.raises(DataError, match=r"custom\.parquet: split 'test' asked for, but this is one file"):
        load_problems(path, split="test")
    with pytest.raises(DataError, match=r"custom\.parquet: no column 'answer' \(mapped to 'answer'\); columns: "
                                        r"\['prompt', 'target', 'uid'\]"):
        load_problems(path, fields=column_fields(problem="prompt", answer="answer"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_problems(tmp_path / "nowhere")


def test_an_empty_split(tmp_path):
    _write_jsonl(tmp_path / "hub" / "test.jsonl", [])
    with pytest.raises(DataError, match=r"hub: empty split 'test' \(no rows\)"):
        load_problems(tmp_path / "hub")
