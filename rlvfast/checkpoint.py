"""Atomic training checkpoints and resume.

Layout under the run directory OUT:

    OUT/checkpoints/step-000050/   a Hugging Face model directory (safetensors, loadable by
                                   transformers and by Sampler) + tokenizer + trainer_state.pt
                                   (optimizer, scheduler, RNG states, data position, step)
    OUT/latest                     one line: the name of the newest COMPLETE checkpoint
    OUT/final/                     the final model (written the same way)

A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed
into place and the parent directory fsynced; only then is `OUT/latest` replaced (temp file,
fsync, rename). A crash at any point leaves the marker naming the previous complete
checkpoint. Resume trusts only the marker: a directory it does not name (a partial write,
a newer checkpoint whose marker was never written) is ignored. Old checkpoints beyond
`keep_last` are deleted only after the new marker is durable. Not here: what goes into the
trainer state (the loop decides).
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

MARKER = "latest"
STATE_FILE = "trainer_state.pt"
CHECKPOINTS = "checkpoints"


class CheckpointError(RuntimeError):
    pass


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_temp_dir(prefix: str, parent: Path) -> Path:
    """A fresh hidden directory with ordinary permissions (mkdtemp's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~_umask())
    return path


def _write_model_dir(path: Path, model, tokenizer) -> None:
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_marker(out: Path, name: str) -> None:
    """Atomically point OUT/latest at checkpoints/<name>."""
    fd, tmp = tempfile.mkstemp(prefix=".latest-", dir=out)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / MARKER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(out)


def read_marker(out: str | os.PathLike) -> Path | None:
    """The checkpoint directory the marker names, or None when there is no marker."""
    out = Path(out)
    marker = out / MARKER
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(f"{marker} is corrupt: it names {name!r}, expected a checkpoint directory name")
    return out / CHECKPOINTS / name


def latest_checkpoint(out: str | os.PathLike) -> Path:
    """The newest complete checkpoint; a clear error when there is none (for --resume)."""
    path = read_marker(out)
    if path is None:
        raise CheckpointError(f"--resume: no checkpoint to resume from in {out} (no {Path(out) / MARKER} "
                              f"marker; a run writes it after its first complete checkpoint)")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume: {Path(out) / MARKER} names {path}, which is missing or incomplete")
    return path


def save_checkpoint(out: str | os.PathLike, step: int, model, tokenizer, trainer_state: dict[str, Any],
                    keep_last: int = 2) -> Path:
    """Writes checkpoints/step-NNNNNN atomically, then the marker, then prunes old ones."""
    if not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
    out = Path(out)
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    suffix = 0
    while (root / name).exists():  # never overwrite a directory the marker may name
        suffix += 1
        name = f"step-{step:06d}.{suffix}"
    tmp = _make_temp_dir(f".tmp-{name}-", root)
    try:
        _write_model_dir(tmp, model, tokenizer)
        torch.save(trainer_state, tmp / STATE_FILE)
        _fsync_tree(tmp)
        os.rename(tmp, root / name)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_marker(out, name)
    _prune(root, keep=name, keep_last=keep_last)
    return root / name


def _prune(root: Path, keep: str, keep_last: int) -> None:
    """Deletes complete checkpoints beyond the newest `keep_last` (never `keep`) and stale temp dirs."""
    complete = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    complete.remove(keep)
    for name in complete[: max(0, len(complete) + 1 - keep_last)]:
        shutil.rmtree(root / name, ignore_errors=True)
    for path in root.glob(".tmp-*"):  # leftovers of a crashed write (never the marker's target)
        shutil.rmtree(path, ignore_errors=True)


def save_final(out: str | os.PathLike, model, tokenizer) -> Path:
    """OUT/final/: the final model as a Hugging Face directory, replaced atomically."""
    out = Path(out)
    final = out / "final"
    tmp = _make_temp_dir(".tmp-final-", out)
    try:
        _write_model_dir(tmp, model, tokenizer)
        _fsync_tree(tmp)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-final-", dir=out))
            os.rename(final, old / "final")
        os.rename(tmp, final)
        _fsync_path(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
