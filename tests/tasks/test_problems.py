"""Loaders on the real files in ../shared/data and on malformed files written to tmp_path."""
import json
import sys

import pytest

from conftest import shared_path
from rlvfast.tasks.problems import DataError, Problem, guess_format, load_problems


def _write(path, rows):
    """Rows are dicts (written as JSON) or raw strings (written verbatim)."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# --- the real files ---

@pytest.mark.parametrize("name, num_rows, format", [
    ("math500", 500, "math"), ("aime24", 30, "aime"), ("amc23", 40, "amc"),
    ("gsm8k_test", 1319, "gsm8k"), ("gsm8k_train", 7473, "gsm8k"),
])
def test_shared_files_load(name, num_rows, format):
    problems = load_problems(shared_path("data", f"{name}.jsonl"))
    assert len(problems) == num_rows and problems.format == format and problems.num_skipped == 0
    assert len({p.id for p in problems}) == num_rows
    assert all(isinstance(p, Problem) and p.problem.strip() and p.answer.strip() for p in problems)


def test_known_answers():
    math500 = load_problems(shared_path("data", "math500.jsonl"))
    assert math500[0].id == "test/precalculus/807.json"
    assert math500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert {"level", "subject", "solution"} <= set(math500[0].meta)
    gsm8k = load_problems(shared_path("data", "gsm8k_test.jsonl"))
    assert (gsm8k[0].id, gsm8k[0].answer) == ("gsm8k_test-1", "18")   # "... #### 18"
    assert gsm8k[0].problem.startswith("Janet")
    assert "#### " not in gsm8k[0].meta["solution"]
    amc = load_problems(shared_path("data", "amc23.jsonl"))
    assert (amc[0].id, amc[0].answer) == ("0", "27")                  # 27.0 in the file
    aime = load_problems(shared_path("data", "aime24.jsonl"))
    assert [p.answer for p in aime[7:9]] == ["25", "809"]              # "025" in the file


def test_no_gsm8k_answer_keeps_thousands_commas():
    gsm8k = load_problems(shared_path("data", "gsm8k_train.jsonl"))
    assert all("," not in p.answer for p in gsm8k)
    assert all(p.answer.lstrip("-").replace(".", "", 1).isdigit() for p in gsm8k)


# --- formats, fields and answers ---

def test_math_answer_falls_back_to_last_nested_box(tmp_path):
    path = _write(tmp_path / "m.jsonl", [
        {"problem": "p", "solution": "so \\boxed{1} and then \\boxed{\\frac{a}{\\sqrt{b}}}."},
        {"problem": "q", "solution": "x", "answer": "\\frac12"},
    ])
    problems = load_problems(path)
    assert problems.format == "math"
    assert [p.answer for p in problems] == ["\\frac{a}{\\sqrt{b}}", "\\frac12"]
    assert [p.id for p in problems] == ["m-1", "m-2"]


def test_field_mapping(tmp_path):
    path = _write(tmp_path / "custom.jsonl", [{"uid": "a", "question": "Q1", "final": 3.0},
                                              {"uid": "b", "question": "Q2", "final": "x+1"}])
    problems = load_problems(path, format="math", fields={"problem": "question", "answer": "final", "id": "uid"})
    assert [(p.id, p.problem, p.answer) for p in problems] == [("a", "Q1", "3"), ("b", "Q2", "x+1")]


def test_field_mapping_missing_source_field(tmp_path):
    path = _write(tmp_path / "custom.jsonl", [{"question": "Q1", "final": "3"}, {"question": "Q2"}])
    with pytest.raises(DataError, match=r"custom\.jsonl:line 2: missing field 'final'"):
        load_problems(path, fields={"problem": "question", "answer": "final"})


@pytest.mark.parametrize("row, expected", [
    ({"problem": "p", "solution": "s", "answer": "\\frac12", "level": "Level 3"}, "math"),
    ({"problem": "p", "answer": "9", "subject": "Algebra"}, "math"),
    ({"problem": "p", "solution": "\\boxed{2}"}, "math"),
    ({"question": "q", "answer": "2+2=4\n#### 4"}, "gsm8k"),
    ({"id": 1, "problem": "p", "answer": "025"}, "aime"),
    ({"id": 1, "problem": "p", "answer": 27.0}, "amc"),
])
def test_guess_format(row, expected):
    assert guess_format(row) == expected


def test_guess_format_fails_clearly(tmp_path):
    path = _write(tmp_path / "odd.jsonl", [{"prompt": "p", "target": "3"}])
    with pytest.raises(DataError, match=r"odd\.jsonl:line 1: cannot guess the format.*'prompt', 'target'"):
        load_problems(path)


def test_explicit_format_is_checked(tmp_path):
    path = _write(tmp_path / "a.jsonl", [{"problem": "p", "answer": "\\frac12"}])
    with pytest.raises(DataError, match=r"a\.jsonl:line 1: field 'answer' must be a number for format 'aime'"):
        load_problems(path, format="aime")
    with pytest.raises(ValueError, match="format must be one of"):
        load_problems(path, format="mathh")
    with pytest.raises(ValueError, match=r"fields keys must be among .*\['prompt'\]"):
        load_problems(path, fields={"prompt": "problem"})


# --- malformed input: each error names the file, the line and the field ---

@pytest.mark.parametrize("rows, pattern", [
    ([{"problem": "p", "answer": "x+1"}, {"answer": "2"}], r"line 2: missing field 'problem'"),
    ([{"problem": "p", "answer": "x+1"}, '{"problem": "q", "answer": '], r"line 2: bad JSON"),
    ([{"problem": "p", "answer": "x+1"}, {"problem": 5, "answer": "2"}],
     r"line 2: field 'problem' must be a non-empty string, got int 5"),
    ([{"problem": "p", "answer": "x+1"}, {"problem": "q", "answer": [1, 2]}],
     r"line 2: field 'answer' must be a string or number, got list"),
    ([{"problem": "p", "answer": "x+1"}, {"problem": "q", "solution": "no box"}],
     r"line 2: no 'answer' field and no \\boxed\{\} in 'solution'"),
    ([{"problem": "p", "answer": "x+1"}, ["a", "list"]], r"line 2: expected a JSON object, got list"),
    ([{"id": "x", "problem": "p", "answer": "1"}, {"id": "x", "problem": "q", "answer": "2"}],
     r"line 2: duplicate id 'x'"),
    ([{"question": "q", "answer": "4\n#### 4"}, {"question": "q2", "answer": "no final line"}],
     r"line 2: malformed field 'answer': no '#### N'"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, rows, pattern):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl:" + pattern):
        load_problems(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
        load_problems(empty)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl"):
        load_problems(tmp_path / "nowhere.jsonl")
    other = tmp_path / "rows.csv"
    other.write_text("a,b\n")
    with pytest.raises(DataError, match=r"rows\.csv: expected a \.jsonl, \.json or \.parquet"):
        load_problems(other)


def test_skip_bad_counts_and_warns(tmp_path):
    path = _write(tmp_path / "mixed.jsonl", [
        {"problem": "p1", "answer": "1"},
        {"answer": "2"},                         # line 2: no problem
        "{not json",                             # line 3
        {"problem": "p4", "answer": "4"},
        {"problem": "", "answer": "5"},          # line 5: empty problem
    ])
    with pytest.warns(UserWarning, match=r"mixed\.jsonl: skipped 3 bad row\(s\); first: .*line 2: missing field 'problem'"):
        problems = load_problems(path, skip_bad=True)
    assert [p.problem for p in problems] == ["p1", "p4"]
    assert problems.num_skipped == 3
    assert [message.split(": ")[0].rsplit(":", 1)[1] for message in problems.skipped] == ["line 2", "line 3", "line 5"]


def test_skip_bad_with_no_good_rows_is_an_error(tmp_path):
    path = _write(tmp_path / "allbad.jsonl", [{"answer": "2"}, "{oops"])
    with pytest.raises(DataError, match=r"allbad\.jsonl: no valid rows \(2 bad; first: .*line 1"):
        load_problems(path, skip_bad=True)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")  # in the `test` and `parquet` extras
    import pyarrow.parquet as pq

    rows = [{"problem": "p", "answer": 27.0, "id": 7}, {"problem": "q", "answer": 3.5, "id": 8}]
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    problems = load_problems(path)
    assert problems.format == "amc"
    assert [(p.id, p.answer) for p in problems] == [("7", "27"), ("8", "3.5")]


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # None in sys.modules: the import fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"x\.parquet: reading \.parquet needs pyarrow: "
                                        r"pip install 'rlvfast\[parquet\]'"):
        load_problems(path)


# --- .json: one array of objects ---

def test_json_array(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"problem": "p", "answer": "\\frac12"}, {"problem": "q", "solution": "\\boxed{3}"}],
                               indent=2))
    problems = load_problems(path)
    assert problems.format == "math"
    assert [(p.id, p.problem, p.answer) for p in problems] == [("set-1", "p", "\\frac12"), ("set-2", "q", "3")]


@pytest.mark.parametrize("text, pattern", [
    ('{"data": [{"problem": "p", "answer": "1"}]}',
     r"d\.json: expected a JSON array of objects, got dict with keys \['data'\]"),
    ('[{"problem": "p", "answer": "1"}, 5]', r"d\.json:row 2: expected a JSON object, got int"),
    ('{"problem": "p", "answer": "1"}\n{"problem": "q", "answer": "2"}\n',
     r"d\.json: bad JSON \(Extra data at line 2 column 1\); one object per line is a \.jsonl file"),
    ('[{"problem": "p", "answer": "1"},', r"d\.json: bad JSON \(Expecting value at line 1 column 34\)$"),
    ("[]", r"d\.json: empty file"),
])
def test_json_that_is_not_an_array_of_objects(tmp_path, text, pattern):
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(DataError, match=pattern):
        load_problems(path)
