"""Where problem rows come from: one data file, a hub-style folder of data files, or a
`datasets` directory written by `save_to_disk`; which split of a folder; the columns known
before any row is read.

`find_source(path, split, default_split)` resolves `path` into its `Part`s (the files, or the
saved split, to read in order) and `read_part(part)` yields their rows as plain dicts:
- a file: `.jsonl` (one JSON object per line), `.json` (one array of objects) or `.parquet`
  (needs pyarrow: `pip install 'rlvfast[parquet]'`); it has no splits;
- a `datasets` directory saved with `save_to_disk` (needs `pip install 'rlvfast[datasets]'`):
  a Dataset (state.json + .arrow files; one split, named by its state.json when it has a name)
  or a DatasetDict (dataset_dict.json + one folder per split);
- a hub-style folder: `.jsonl` / `.json` / `.parquet` files at its top, under `data/`, or under
  `data/SPLIT/`, each file's split named in its file name as the Hugging Face hub names it:
  `SPLIT-00000-of-00002.parquet` (any split name), or a word of the name among train/training,
  validation/valid/val/dev, test/testing/eval/evaluation (`test.jsonl`, `gsm8k_train.jsonl`).
  A split's files are read in name order, one after the other. When no file names a split,
  all of them are one split, 'train' (as on the hub); a file that names none beside files that
  do is an error (the hub would skip it silently).

The split: the one asked for, else `default_split` when the folder has it, else the only one;
anything else is a `DataError` naming the splits there. Not here: what a row means
(`rlvfast.tasks.problems`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
# the hub's split keywords (datasets.data_files): a word of the file name -> the split
SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "test",
               "evaluation": "test"}
_SHARD_RE = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}")  # train-00000-of-00002(-hash)
_WORD_SEPARATORS = re.compile(r"[-._ 0-9]+")
_METADATA_FILES = {"dataset_info.json", "dataset_infos.json"}  # JSON beside the data, not rows


class DataError(ValueError):
    """Data that cannot be read as problems; the message names the file (or folder), the
    line or row, and the field or column."""


@dataclass(frozen=True, slots=True)
class Part:
    """One file, or one saved `datasets` split (`is_saved`), of a data source; rows without an
    id get `{id_stem}-{row number}`."""
    path: Path
    id_stem: str
    is_saved: bool = False


@dataclass(frozen=True, slots=True)
class Source:
    """`path` resolved: the split read (None for one file or an unnamed Dataset) and its parts."""
    path: Path
    split: str | None
    parts: tuple[Part, ...]


def find_source(path: str | Path, split: str | None = None, default_split: str = "train") -> Source:
    """The parts of `path` to read for `split` (see the module docstring)."""
    path = Path(path)
    if path.is_file():
        if split is not None:
            raise DataError(f"{path}: split {split!r} asked for, but this is one file (splits are for a "
                            f"directory); pass no split")
        return Source(path, None, (Part(path, path.stem),))
    if not path.is_dir():
        raise FileNotFoundError(f"problem file or directory not found: {path}")
    if (path / "dataset_dict.json").is_file():
        return _saved_dataset_dict(path, split, default_split)
    if (path / "state.json").is_file():
        return _saved_dataset(path, split)
    return _hub_folder(path, split, default_split)


def pick_split(path: Path, available: list[str], split: str | None, default_split: str) -> str:
    """The split asked for, else `default_split` where there is one, else the only one."""
    if split is not None:
        if split not in available:
            raise DataError(f"{path}: no split {split!r}; splits: {available}")
        return split
    if default_split in available:
        return default_split
    if len(available) == 1:
        return available[0]
    raise DataError(f"{path}: no split {default_split!r} and {len(available)} others, {available}; "
                    f"pick one (--data-split)")


def _saved_dataset_dict(path: Path, split: str | None, default_split: str) -> Source:
    splits = _read_json(path / "dataset_dict.json").get("splits")
    if not isinstance(splits, list) or not splits:
        raise DataError(f"{path / 'dataset_dict.json'}: expected {{\"splits\": [names...]}}, got {splits!r}")
    chosen = pick_split(path, [str(s) for s in splits], split, default_split)
    return Source(path, chosen, (Part(path / chosen, chosen, is_saved=True),))


def _saved_dataset(path: Path, split: str | None) -> Source:
    """One Dataset: its split is the name in its state.json, when it has one."""
    name = _read_json(path / "state.json").get("_split")
    if split is not None and name is None:
        raise DataError(f"{path}: split {split!r} asked for, but this is one Dataset with no split name (saved "
                        f"with save_to_disk); pass no split, or save a DatasetDict")
    if split is not None and split != name:
        raise DataError(f"{path}: no split {split!r}; splits: [{name!r}] (one Dataset saved with save_to_disk)")
    return Source(path, name, (Part(path, name or path.name, is_saved=True),))


def _hub_folder(path: Path, split: str | None, default_split: str) -> Source:
    by_split = _files_by_split(path)
    chosen = pick_split(path, sorted(by_split), split, default_split)
    files = sorted(by_split[chosen], key=lambda f: f.relative_to(path).as_posix())
    return Source(path, chosen, tuple(Part(f, f.stem) for f in files))


def _files_by_split(path: Path) -> dict[str, list[Path]]:
    """The folder's data files by split; all 'train' when no file names a split."""
    found: dict[Path, str | None] = {}
    for folder in [path, path / "data", *sorted(p for p in (path / "data").glob("*") if p.is_dir())]:
        for file in folder.glob("*"):
            if file.is_file() and file.suffix in DATA_SUFFIXES and file.name not in _METADATA_FILES:
                found[file] = folder.name if folder.parent == path / "data" else file_split(file.name)
    if not found:
        folders = sorted(p.name for p in path.iterdir() if p.is_dir() and p.name != "data")
        raise DataError(f"{path}: no data files ({', '.join(DATA_SUFFIXES)}) at its top or under data/, and no "
                        f"datasets save_to_disk files (dataset_dict.json or state.json)"
                        + (f"; its folders: {folders} (pass one as the data)" if folders else ""))
    if all(name is None for name in found.values()):
        return {"train": list(found)}
    if unnamed := sorted(f.relative_to(path).as_posix() for f, name in found.items() if name is None):
        raise DataError(f"{path}: file(s) {unnamed} name no split while others do "
                        f"({sorted({n for n in found.values() if n})}); name each file for its split "
                        f"(train.jsonl, test-00000-of-00001.parquet) or pass one file as the data")
    by_split: dict[str, list[Path]] = {}
    for file, name in found.items():
        by_split.setdefault(name, []).append(file)
    return by_split


def file_split(name: str) -> str | None:
    """The split a data file's name gives it, as the hub reads it: `SPLIT-00000-of-00002.parquet`
    -> SPLIT, else the one split keyword among its words (`gsm8k_test.jsonl` -> 'test'), else None."""
    stem = Path(name).stem
    if match := _SHARD_RE.match(stem):
        return match["split"]
    named = {SPLIT_WORDS[w] for w in _WORD_SEPARATORS.split(stem.lower()) if w in SPLIT_WORDS}
    return named.pop() if len(named) == 1 else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: bad JSON ({error.msg} at line {error.lineno} column {error.colno})") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------- rows
def read_part(part: Part) -> tuple[list[str] | None, Iterator[tuple[str, Any]]]:
    """(the columns when the format declares them (parquet, arrow), else None; the rows as
    (`line N` or `row N`, row)). A bad line of a .jsonl comes as a DataError in the row's place,
    for the caller to raise or skip; a bad .json file is an error here."""
    if part.is_saved:
        return _saved_rows(part.path)
    if part.path.suffix == ".parquet":
        return _parquet_rows(part.path)
    if part.path.suffix == ".json":
        return None, _json_array_rows(part.path)
    if part.path.suffix == ".jsonl":
        return None, _jsonl_rows(part.path)
    raise DataError(f"{part.path}: expected a .jsonl, .json or .parquet file (or a directory), got suffix "
                    f"{part.path.suffix!r}")


def _saved_rows(path: Path) -> tuple[list[str], Iterator[tuple[str, Any]]]:
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"{path}: reading a datasets save_to_disk directory needs the datasets library: "
                        f"pip install 'rlvfast[datasets]'") from error
    dataset = datasets.load_from_disk(str(path))
    rows = dataset.to_list()  # plain Python values whatever format the dataset was saved with
    return list(dataset.column_names), ((f"row {n}", row) for n, row in enumerate(rows, start=1))


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[tuple[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"{path}: reading .parquet needs pyarrow: pip install 'rlvfast[parquet]'") from error
    table = pq.read_table(path)
    return list(table.column_names), ((f"row {n}", row) for n, row in enumerate(table.to_pylist(), start=1))


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


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                yield f"line {number}", DataError(f"{path}:line {number}: bad JSON ({error.msg} at column "
                                                  f"{error.colno})")
