"""The run directory `--out` of `python -m rlvfast.train`: who may write into it, and when.

- `hold_lock(out)`: one run per directory. An exclusive `fcntl.flock` on `OUT/.lock`, held for
  the run's life and holding its pid; a second run fails at once naming that pid. The kernel
  drops the lock when the process dies, however it dies, so a stale `.lock` file never blocks.
- `prepare(out, resume, overwrite)`: a fresh run needs an empty `--out` (the `.lock` file
  aside); `--resume` continues what is there; `--overwrite` first deletes the run's own files
  (`RUN_FILES` and the checkpoint writer's hidden temporaries), leaving anything else alone.

Not here: what a run writes (`rlvfast.train`, `rlvfast.train.checkpoint`).
"""
from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlvfast.cli import UserError
from rlvfast.train import checkpoint as ckpt

LOCK_FILE = ".lock"
RUN_FILES = ("metrics.jsonl", "metrics.tmp", "checkpoints", "latest", "final", "summary.json",
             "base_method", "base_model.json", "comparison.png",  # these three: rlvfast.train.compare
             "runs", "wandb", "trackers.json")  # --report-to's (rlvfast.train.trackers)
_TEMP_PREFIXES = (".latest-", ".tmp-final-", ".old-final-")  # rlvfast.train.checkpoint's temporaries


@contextmanager
def hold_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Creates `out` if needed and holds `out/.lock` until the block ends; a UserError naming
    the holder's pid when another process holds it."""
    out = Path(out)
    path = out / LOCK_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a file named OUT, a read-only parent
        raise UserError(f"--out {out}: cannot create {path} ({e.strerror})") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"--out {out} is in use by another run (pid {holder}, holding {path}); "
                            f"wait for it to end or pass another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield out
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def prepare(out: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Applies the fresh / `--resume` / `--overwrite` rule to `out` (call it under `hold_lock`)."""
    out = Path(out)
    if resume:  # (TrainConfig refuses --resume with --overwrite)
        ckpt.clean_stale(out)  # a crash mid-save: restore OUT/final, drop temporary copies
        return
    if overwrite:
        for path in run_files(out):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        return
    present = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) if out.is_dir() else []
    if present:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise UserError(f"--out {out} is not empty ({shown}): pass --resume to continue the run in it, "
                        f"--overwrite to replace it, or another --out")


def run_files(out: Path) -> list[Path]:
    """The files and directories a run writes into `out` that exist now."""
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if p.name in RUN_FILES or p.name.startswith(_TEMP_PREFIXES)]
