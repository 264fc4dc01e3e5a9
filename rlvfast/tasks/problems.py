"""Problem records and loaders for MATH, GSM8K, AIME and AMC style data.

`load_problems(path)` reads a data file or folder into `Problem`s with string gold answers.
`path` is a `.jsonl` (one JSON object per line), `.json` (one array of objects) or `.parquet`
file (needs pyarrow: `pip install 'rlvfast[parquet]'`), or a directory: a `datasets`
`save_to_disk` directory (needs `pip install 'rlvfast[datasets]'`) or a hub-style folder of
such files, split by file name (`train-00000-of-00001.parquet`, `test.jsonl`); `split=` picks
the split, else `default_split` where there is one, else the only one (the rules, and the
errors naming the splits there: `rlvfast.tasks.sources`). MATH takes the `answer` field or
else the last `\\boxed{}` of `solution`; GSM8K takes the text after `####`; AIME/AMC answers
are numbers, written as integers where integral (`27.0` -> `27`, `025` -> `25`). The format is
guessed from the first row unless given, and `fields` maps other schemas' keys onto ours
(`column_fields` builds it from the --problem-field / --answer-field / --id-field options); a
mapped column that is not there is a `DataError` naming it and the columns there. A bad row is
a `DataError` naming the file, the line and the field; `skip_bad=True` skips bad rows instead,
warns once with the count and the first one, and records them on the returned list. Rows
without an id get `FILE-STEM-N` (a saved split: `SPLIT-N`, an unnamed saved Dataset:
`FOLDER-N`). Synthetic problems live in
`rlvfast.tasks.synthetic`; grading lives in `rlvfast.tasks.grading`.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvfast.answers import last_boxed
from rlvfast.tasks.sources import DataError, Part, find_source, read_part

__all__ = ["DataError", "FIELD_KEYS", "FORMATS", "Problem", "ProblemList", "column_fields", "guess_format",
           "load_problems"]


@dataclass(slots=True)
class Problem:
    """One problem: a stable id, the problem text and the gold answer (a string)."""
    id: str
    problem: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


FORMATS = ("math", "gsm8k", "aime", "amc")
FIELD_KEYS = ("problem", "answer", "id", "solution")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_GSM8K_FINAL_RE = re.compile(r"####\s*\S")
_META_SKIP = {"problem", "question", "answer", "id", "unique_id"}


class ProblemList(list):
    """The loaded problems, plus what was skipped (`skip_bad=True`): `skipped` holds one
    message per bad row, `num_skipped` their count; `split` is the split read from a
    directory (None for a file)."""

    def __init__(self, problems: list[Problem], path: Path, format: str, skipped: list[str],
                 split: str | None = None):
        super().__init__(problems)
        self.path = path
        self.format = format
        self.skipped = skipped
        self.split = split

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def column_fields(problem: str | None = None, answer: str | None = None, id: str | None = None) -> dict[str, str]:
    """`fields` for `load_problems` from the --problem-field, --answer-field and --id-field
    options (None: our own key, or its usual alternatives)."""
    return {ours: theirs for ours, theirs in (("problem", problem), ("answer", answer), ("id", id))
            if theirs is not None}


def load_problems(path: str | Path, format: str | None = None, fields: dict[str, str] | None = None,
                  skip_bad: bool = False, split: str | None = None, default_split: str = "train") -> ProblemList:
    """Problems from a data file or directory (see the module docstring). `split` is the
    directory's split to read; without it, `default_split` where there is one, else the only one."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
    fields = dict(fields or {})
    if unknown := sorted(set(fields) - set(FIELD_KEYS)):
        raise ValueError(f"fields keys must be among {FIELD_KEYS}, got {unknown} (map our name -> "
                         f"the file's key, e.g. {{'problem': 'question'}})")
    source = find_source(path, split, default_split)
    reader = _Reader(format, fields, skip_bad)
    for part in source.parts:
        reader.read(part)
    problems, skipped = reader.problems, reader.skipped
    if not problems and not skipped:
        empty = "empty file" if source.path.is_file() else f"empty split {source.split!r}" if source.split else "empty"
        raise DataError(f"{source.path}: {empty} (no rows)")
    if not problems:
        raise DataError(f"{source.path}: no valid rows ({len(skipped)} bad; first: {skipped[0]})")
    if skipped:
        warnings.warn(f"{source.path}: skipped {len(skipped)} bad row(s); first: {skipped[0]}", stacklevel=2)
    return ProblemList(problems, source.path, reader.format, skipped, source.split)


@dataclass(slots=True)
class _Reader:
    """Rows -> problems across the parts of one source: the first row decides the format, ids
    are unique across parts, bad rows raise or (skip_bad) are collected."""
    format: str | None
    fields: dict[str, str]
    skip_bad: bool
    problems: list[Problem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)

    def read(self, part: Part) -> None:
        columns, rows = read_part(part)
        if columns is not None:
            _check_columns(part.path, columns, self.fields)
        for where, row in rows:
            try:
                problem = self._problem(row, part, where)
            except DataError as error:
                if not self.skip_bad:
                    raise
                self.skipped.append(str(error))
                continue
            self.seen_ids.add(problem.id)
            self.problems.append(problem)

    def _problem(self, row: Any, part: Part, where: str) -> Problem:
        if isinstance(row, DataError):  # a line that is not JSON
            raise row
        view = _apply_fields(row, self.fields, part.path, where)
        if self.format is None:
            self.format = guess_format(view, part.path, where)
        problem = _to_problem(view, self.format, part, where)
        if problem.id in self.seen_ids:
            raise DataError(f"{part.path}:{where}: duplicate id {problem.id!r}")
        return problem


def _check_columns(path: Path, columns: list[str], fields: dict[str, str]) -> None:
    """A mapped column that a parquet file or saved dataset lacks, named with the ones it has."""
    if missing := [f"{theirs!r} (mapped to {ours!r})" for ours, theirs in fields.items() if theirs not in columns]:
        raise DataError(f"{path}: no column {', '.join(missing)}; columns: {columns}")


def guess_format(row: dict[str, Any], path: Path | str = "<row>", where: str = "line 1") -> str:
    """The format of a row from its fields (the first row decides for a whole file)."""
    answer = row.get("answer")
    has_text = "problem" in row or "question" in row
    if has_text and isinstance(answer, str) and _GSM8K_FINAL_RE.search(answer):
        return "gsm8k"
    if "problem" in row and _is_number(answer):
        if isinstance(answer, str) and ("level" in row or "subject" in row):
            return "math"  # a MATH row whose answer happens to be a number
        return "amc" if isinstance(answer, float) else "aime"
    if "problem" in row and ("answer" in row or "solution" in row):
        return "math"
    raise DataError(f"{path}:{where}: cannot guess the format from fields {sorted(row)}; pass "
                    f"format= (one of {FORMATS}) or fields= (e.g. {{'problem': 'question'}})")


def _apply_fields(row: Any, fields: dict[str, str], path: Path, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{path}:{where}: expected a JSON object, got {type(row).__name__}")
    view = dict(row)
    for ours, theirs in fields.items():
        if theirs not in row:
            raise DataError(f"{path}:{where}: missing field {theirs!r} (mapped to {ours!r}); "
                            f"fields present: {sorted(row)}")
        view[ours] = row[theirs]
    return view


def _to_problem(row: dict[str, Any], format: str, part: Part, where: str) -> Problem:
    path = part.path
    stem_id = f"{part.id_stem}-{where.split()[-1]}"
    text_key = "question" if "problem" not in row and "question" in row else "problem"
    text = _require_text(row, text_key, path, where)
    meta = {key: value for key, value in row.items() if key not in _META_SKIP}
    if format == "gsm8k":
        solution = _require_text(row, "answer", path, where)
        if "####" not in solution:
            raise DataError(f"{path}:{where}: malformed field 'answer': no '#### N' final line")
        reasoning, _, final = solution.rpartition("####")
        answer = final.strip().replace(",", "")
        meta["solution"] = reasoning.strip()
    elif format == "math":
        answer = _answer_text(row, path, where) if "answer" in row else None
        if answer is None:
            solution = _require_text(row, "solution", path, where)
            answer = last_boxed(solution)
            if not answer:
                raise DataError(f"{path}:{where}: no 'answer' field and no \\boxed{{}} in 'solution'")
    else:  # aime, amc: a number
        if "answer" not in row:
            raise DataError(f"{path}:{where}: missing field 'answer'; fields present: {sorted(row)}")
        if not _is_number(row["answer"]):
            raise DataError(f"{path}:{where}: field 'answer' must be a number for format {format!r}, "
                            f"got {_describe(row['answer'])}")
        answer = _number_text(row["answer"])
    if not answer:
        raise DataError(f"{path}:{where}: empty answer")
    raw_id = row.get("id", row.get("unique_id"))
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, type(None))):
        raise DataError(f"{path}:{where}: field 'id' must be a string or integer, got {_describe(raw_id)}")
    return Problem(id=str(raw_id) if raw_id is not None else stem_id, problem=text, answer=answer,
                   meta=meta)


def _require_text(row: dict[str, Any], key: str, path: Path, where: str) -> str:
    if key not in row:
        raise DataError(f"{path}:{where}: missing field {key!r}; fields present: {sorted(row)}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}:{where}: field {key!r} must be a non-empty string, got {_describe(value)}")
    return value


def _answer_text(row: dict[str, Any], path: Path, where: str) -> str | None:
    """A MATH `answer` field as text (None when empty, so the solution's box is used)."""
    value = row["answer"]
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if _is_number(value):
        return _number_text(value)
    raise DataError(f"{path}:{where}: field 'answer' must be a string or number, got {_describe(value)}")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and _NUMBER_RE.match(value.strip()) is not None


def _number_text(value: int | float | str) -> str:
    """`27.0` -> `27`, `025` -> `25`, `2.50` -> `2.5`."""
    if isinstance(value, str):
        value = value.strip()
        if value.lstrip("+-").isdigit():
            return str(int(value))
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
