"""Problem records and loaders for MATH, GSM8K, AIME and AMC style files.

`load_problems(path)` reads one file into `Problem`s with string gold answers. A file is
`.jsonl` (one JSON object per line), `.json` (one array of objects) or `.parquet` (needs
pyarrow: `pip install 'rlvfast[parquet]'`). MATH takes the
`answer` field or else the last `\\boxed{}` of `solution`; GSM8K takes the text after
`####`; AIME/AMC answers are numbers, written as integers where integral (`27.0` -> `27`,
`025` -> `25`). The format is guessed from the first row unless given, and `fields` maps
other files' keys onto ours. A bad row is a `DataError` naming the file, the line and the
field; `skip_bad=True` skips bad rows instead, warns once with the count and the first one,
and records them on the returned list. Synthetic problems live in `rlvfast.tasks.synthetic`;
grading lives in `rlvfast.tasks.grading`.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlvfast.answers import last_boxed


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


class DataError(ValueError):
    """A file that cannot be read as problems; the message names the file, line and field."""


class ProblemList(list):
    """The loaded problems, plus what was skipped (`skip_bad=True`): `skipped` holds one
    message per bad row, `num_skipped` their count."""

    def __init__(self, problems: list[Problem], path: Path, format: str, skipped: list[str]):
        super().__init__(problems)
        self.path = path
        self.format = format
        self.skipped = skipped

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def load_problems(path: str | Path, format: str | None = None, fields: dict[str, str] | None = None,
                  skip_bad: bool = False) -> ProblemList:
    """Problems from a `.jsonl`, `.json` or `.parquet` file (see the module docstring)."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
    fields = dict(fields or {})
    if unknown := sorted(set(fields) - set(FIELD_KEYS)):
        raise ValueError(f"fields keys must be among {FIELD_KEYS}, got {unknown} (map our name -> "
                         f"the file's key, e.g. {{'problem': 'question'}})")
    if not path.is_file():
        raise FileNotFoundError(f"problem file not found: {path}")

    problems: list[Problem] = []
    skipped: list[str] = []
    seen_ids: set[str] = set()
    for where, row in _read_rows(path, skip_bad, skipped):
        try:
            view = _apply_fields(row, fields, path, where)
            if format is None:
                format = guess_format(view, path, where)
            problem = _to_problem(view, format, path, where)
            if problem.id in seen_ids:
                raise DataError(f"{path}:{where}: duplicate id {problem.id!r}")
        except DataError as error:
            if not skip_bad:
                raise
            skipped.append(str(error))
            continue
        seen_ids.add(problem.id)
        problems.append(problem)

    if not problems and not skipped:
        raise DataError(f"{path}: empty file (no rows)")
    if not problems:
        raise DataError(f"{path}: no valid rows ({len(skipped)} bad; first: {skipped[0]})")
    if skipped:
        warnings.warn(f"{path}: skipped {len(skipped)} bad row(s); first: {skipped[0]}", stacklevel=2)
    return ProblemList(problems, path, format, skipped)


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


def _read_rows(path: Path, skip_bad: bool, skipped: list[str]) -> Iterator[tuple[str, Any]]:
    """(`line N` or `row N`, row) pairs; bad JSON is a DataError (or skipped, in a .jsonl)."""
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
    elif path.suffix == ".json":
        yield from _json_array_rows(path)
    elif path.suffix == ".jsonl":
        yield from _jsonl_rows(path, skip_bad, skipped)
    else:
        raise DataError(f"{path}: expected a .jsonl, .json or .parquet file, got suffix {path.suffix!r}")


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"{path}: reading .parquet needs pyarrow: pip install 'rlvfast[parquet]'") from error
    for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield f"row {number}", row


def _json_array_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """A .json file is one array of objects; a bad file is an error even with skip_bad (no row
    of it can be told apart from the next)."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        hint = "; one object per line is a .jsonl file" if error.msg == "Extra data" else ""
        raise DataError(f"{path}: bad JSON ({error.msg} at line {error.lineno} column {error.colno}){hint}") from error
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(rows).__name__}"
                        + (f" with keys {sorted(rows)[:8]}" if isinstance(rows, dict) else ""))
    for number, row in enumerate(rows, start=1):
        yield f"row {number}", row


def _jsonl_rows(path: Path, skip_bad: bool, skipped: list[str]) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                message = f"{path}:line {number}: bad JSON ({error.msg} at column {error.colno})"
                if not skip_bad:
                    raise DataError(message) from error
                skipped.append(message)


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


def _to_problem(row: dict[str, Any], format: str, path: Path, where: str) -> Problem:
    stem_id = f"{path.stem}-{where.split()[-1]}"
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
