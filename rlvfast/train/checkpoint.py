"""Atomic training checkpoints, the final model, and resume.

Layout under the run directory OUT:

    OUT/checkpoints/step-000050/   a Hugging Face model directory (safetensors, loadable by
                                   transformers and by Sampler) + tokenizer + trainer_state.pt
                                   (optimizer, scheduler, RNG states, step, what the loop adds)
    OUT/latest                     one line: the name of the newest COMPLETE checkpoint
    OUT/final/                     the final model: a plain directory, written the same way

A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed
into place and the parent directory fsynced; only then is `OUT/latest` replaced (temp file,
fsync, rename). A crash at any point leaves the marker naming the previous complete
checkpoint. Resume trusts only the marker: a directory it does not name (a partial write,
a newer checkpoint whose marker was never written) is ignored. Old checkpoints beyond
`keep_last` are deleted only after the new marker is durable.

`OUT/final` is replaced by writing the new model into `OUT/.tmp-final-*` and swapping the two
directories in one atomic renameat2(RENAME_EXCHANGE) (Linux: ext4, xfs, btrfs, tmpfs). Where
the filesystem lacks it (NFS, macOS) two renames are used: the old final moves to
`OUT/.old-final-*`, the new one into place; an error between them moves the old one back, and
a crash between them is repaired by `clean_stale` (old final restored), which every save calls
first and a run should call at its start. `clean_stale` also deletes what crashed writes leave
(`.tmp-final-*`, `.old-final-*`, `.latest-*`, `checkpoints/.tmp-*`).

Under torchrun (`save_sharded_checkpoint`) a checkpoint holds `dcp/` (the trained weights, with
LoRA the adapters alone, and the optimizer as torch.distributed.checkpoint shards, readable at any
world size), `rng-RRRRR.pt` per rank and `trainer_state.pt`, committed by rank 0 by the same
protocol once every rank has written; OUT/final is gathered on rank 0 into one Hugging Face
directory (`save_final_gathered`). A one-process checkpoint resumed under torchrun gives the
sharded model its optimizer state (`load_full_optimizer`) and, with --dtype bf16, its float32
master weights (`load_master_weights`).

Any failure while saving raises `CheckpointError` naming what failed and the last complete
checkpoint, after removing its temporary directory; nothing already on disk is lost, so the
caller may log it and go on. KeyboardInterrupt and SystemExit pass through unchanged. Not here:
what goes into the trainer state (the loop decides).
"""
from __future__ import annotations

import ctypes
import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvfast.models import umask

MARKER = "latest"
STATE_FILE = "trainer_state.pt"
CHECKPOINTS = "checkpoints"


FINAL = "final"


class CheckpointError(RuntimeError):
    """A checkpoint or the final model could not be read or written; the message says which
    and names the last complete checkpoint."""


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


def make_temp_dir(prefix: str, parent: Path) -> Path:
    """A fresh hidden directory with ordinary permissions (mkdtemp's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~umask())
    return path


def _write_model_dir(path: Path, model, tokenizer) -> None:
    from rlvfast.models import save_model

    save_model(model, tokenizer, path)


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
        os.fchmod(fd, 0o666 & ~umask())
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


def _last_complete(out: Path) -> str:
    """For error messages: the checkpoint the marker names, or why there is none."""
    try:
        path = read_marker(out)
    except (CheckpointError, OSError) as e:
        return f"unknown ({e})"
    return str(path) if path is not None else "none yet"


def save_checkpoint(out: str | os.PathLike, step: int, model, tokenizer, trainer_state: dict[str, Any],
                    keep_last: int = 2) -> Path:
    """Writes checkpoints/step-NNNNNN atomically, then the marker, then prunes old ones.
    Any failure raises CheckpointError (the previous checkpoint and marker stay as they were)."""
    if not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
    out = Path(out)
    root = out / CHECKPOINTS
    name, tmp, stage = f"step-{step:06d}", None, f"creating {root}"
    try:
        name, tmp = _start_dir(out, step)
        stage = f"writing {tmp}"
        _write_model_dir(tmp, model, tokenizer)
        torch.save(trainer_state, tmp / STATE_FILE)
        os.chmod(tmp / STATE_FILE, 0o666 & ~umask())
        _fsync_tree(tmp)
        stage = f"renaming {tmp.name} to {root / name}"
        os.rename(tmp, root / name)
        tmp = None
        _fsync_path(root)
        stage = f"pointing {out / MARKER} at {name}"
        write_marker(out, name)
    except Exception as e:
        raise CheckpointError(f"checkpoint {name} not saved: {stage} failed: {type(e).__name__}: {e}; "
                              f"the last complete checkpoint is {_last_complete(out)}") from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, keep=name, keep_last=keep_last)
    return root / name


def _start_dir(out: Path, step: int) -> tuple[str, Path]:
    """(the new checkpoint's name, the hidden temporary directory it is written into), after
    clearing what crashed writes left; a name already on disk gets a suffix (`step-NNNNNN.1`):
    a directory the marker may name is never overwritten."""
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    name, suffix = f"step-{step:06d}", 0
    while (root / name).exists():
        suffix += 1
        name = f"step-{step:06d}.{suffix}"
    return name, make_temp_dir(f".tmp-{name}-", root)


def _prune(root: Path, keep: str, keep_last: int) -> None:
    """Deletes complete checkpoints beyond the newest `keep_last` (never `keep`)."""
    complete = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    complete.remove(keep)
    for name in complete[: max(0, len(complete) + 1 - keep_last)]:
        shutil.rmtree(root / name, ignore_errors=True)


def clean_stale(out: str | os.PathLike) -> list[Path]:
    """Repairs and tidies what crashed saves leave in OUT; returns the paths it removed.

    A missing OUT/final with an `.old-final-*` beside it (a crash between the two renames of
    the fallback swap) gets that old final back. Then temporary and old copies are deleted:
    `.tmp-final-*`, `.old-final-*`, `.latest-*` and `checkpoints/.tmp-*` (never the marker's target,
    which is always a `step-*` directory). Assumes one writer per OUT."""
    out = Path(out)
    if not out.is_dir():
        return []
    final = out / FINAL
    olds = sorted(out.glob(".old-final-*"), key=lambda p: p.stat().st_mtime)
    if olds and not final.exists():
        os.rename(olds.pop(), final)
        _fsync_path(out)
    stale = [*out.glob(".tmp-final-*"), *olds, *out.glob(".latest-*"), *(out / CHECKPOINTS).glob(".tmp-*")]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two existing paths (Linux renameat2 RENAME_EXCHANGE). False where the
    C library or the filesystem lacks it; other failures raise OSError."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _swap_by_renames(new: Path, target: Path) -> Path:
    """The fallback swap: target -> .old-<target name>-<new's suffix>, new -> target; moves the
    old one back on an error between the two. Returns where the old target now is."""
    old = target.parent / f".old-{target.name}-{new.name.rsplit('-', 1)[-1]}"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    return old


def replace_dir(new: Path, target: Path) -> Path | None:
    """Puts the finished directory `new` at `target` (same filesystem). An existing `target` stays
    whole until `new` is in place: swapped atomically (`_exchange`), else by two renames. Returns
    where the old target now is, for the caller to delete, or None when there was none."""
    if not target.exists():
        os.rename(new, target)
        return None
    if _exchange(new, target):
        return new  # `new` now holds the old target
    return _swap_by_renames(new, target)


def save_final(out: str | os.PathLike, model, tokenizer) -> Path:
    """OUT/final/: the final model as a Hugging Face directory. The previous OUT/final stays
    whole until the new one is complete; any failure raises CheckpointError."""
    out = Path(out)
    final = out / FINAL
    tmp, stage = None, f"creating {out}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale(out)
        tmp = make_temp_dir(".tmp-final-", out)
        stage = f"writing {tmp}"
        _write_model_dir(tmp, model, tokenizer)
        _fsync_tree(tmp)
        stage = f"moving {tmp.name} to {final}"
        tmp = replace_dir(tmp, final)  # now the old final (deleted below), or None
        stage = f"syncing {out} (the new final model is in place)"
        _fsync_path(out)
    except Exception as e:
        state = "absent" if not final.exists() else "the new model" if stage.startswith("syncing") else "unchanged"
        raise CheckpointError(f"final model not saved: {stage} failed: {type(e).__name__}: {e}; {final} is "
                              f"{state}; the last complete checkpoint is {_last_complete(out)}") from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- sharded (torchrun)
SHARDED = "dcp"  # a checkpoint's torch.distributed.checkpoint directory (model + optimizer shards)


def is_sharded(path: Path) -> bool:
    """A checkpoint written under torchrun (DCP shards), not a Hugging Face directory."""
    return (Path(path) / SHARDED).is_dir()


def _rng_file(rank: int) -> str:
    return f"rng-{rank:05d}.pt"


def _agree(world, error: str | None, what: str) -> None:
    """Raises CheckpointError on every rank when any rank's `error` is set."""
    errors = [e for e in world.gather([error], f"agreeing on {what}") if e]
    if errors:
        raise CheckpointError(errors[0])


def _begin_sharded(out: Path, step: int, world) -> tuple[str, Path]:
    """Rank 0 makes the hidden temporary directory every rank writes into; (name, temp dir)."""
    root = out / CHECKPOINTS
    name, tmp, error = f"step-{step:06d}", None, None
    if world.is_main:
        try:
            name, tmp = _start_dir(out, step)
        except Exception as e:
            error = (f"checkpoint {name} not saved: creating its directory in {root} failed: {type(e).__name__}: "
                     f"{e}; the last complete checkpoint is {_last_complete(out)}")
    name, tmp, error = world.broadcast((name, tmp, error), "creating the checkpoint directory")
    if error:
        raise CheckpointError(error)
    return name, Path(tmp)


def _trained_state(model) -> dict[str, Any]:
    """The model state a sharded checkpoint holds: every weight, or of a LoRA model the adapters alone
    (its frozen base comes from the run's start on resume). By name, since a frozen tied weight
    (lm_head.weight, the embeddings' tensor) is one parameter: `ignore_frozen_params` keeps it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {name: value for name, value in get_model_state_dict(model).items() if name not in frozen}


def _write_shards(tmp: Path, model, optimizer, rank: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {"model": _trained_state(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=tmp / SHARDED)
    torch.save(rng_state(), tmp / _rng_file(rank))


def _commit(out: Path, name: str, tmp: Path, trainer_state: dict[str, Any]) -> None:
    """Rank 0, after every rank wrote its shards: the trainer state, fsync, rename, the marker."""
    root = out / CHECKPOINTS
    torch.save(trainer_state, tmp / STATE_FILE)
    for path in tmp.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~umask())
    _fsync_tree(tmp)
    os.rename(tmp, root / name)
    _fsync_path(root)
    write_marker(out, name)


def save_sharded_checkpoint(out: str | os.PathLike, step: int, model_and_optimizer: tuple, trainer_state: dict[str, Any],
                            keep_last: int, world) -> Path:
    """Under torchrun, on every rank: checkpoints/step-NNNNNN with the model and optimizer as DCP
    shards (`dcp/`), each rank's RNG state (`rng-RRRRR.pt`) and `trainer_state.pt` (rank 0's: step,
    schedule, config), by the same protocol as `save_checkpoint`: all written into a temporary
    directory, a barrier, then rank 0 renames it and writes the marker. Any failure raises
    CheckpointError on every rank; the previous checkpoint and marker stay as they were."""
    out = Path(out)
    model, optimizer = model_and_optimizer
    name, tmp = _begin_sharded(out, step, world)
    error = None
    try:
        _write_shards(tmp, model, optimizer, world.rank)
    except Exception as e:
        error = (f"checkpoint {name} not saved: rank {world.rank} writing {tmp} failed: {type(e).__name__}: {e}; "
                 f"the last complete checkpoint is {_last_complete(out)}")
    try:
        _agree(world, error, "the checkpoint's shards")
        if world.is_main:
            try:
                _commit(out, name, tmp, trainer_state)
                tmp = None
            except Exception as e:
                error = (f"checkpoint {name} not saved: committing {tmp} failed: {type(e).__name__}: {e}; "
                         f"the last complete checkpoint is {_last_complete(out)}")
        _agree(world, error, "the checkpoint's commit")
    finally:
        if world.is_main and tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if world.is_main:
        _prune(out / CHECKPOINTS, keep=name, keep_last=keep_last)
    return out / CHECKPOINTS / name


def load_sharded(path: Path, model, optimizer, rank: int) -> None:
    """A sharded checkpoint's model and optimizer state into `model` (FSDP2, any world size: DCP
    reshards) and `optimizer`, and this rank's RNG state (rank 0's when the checkpoint had fewer ranks)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    state = {"model": _trained_state(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    try:
        dcp.load(state, checkpoint_id=Path(path) / SHARDED)
    except Exception as e:
        raise CheckpointError(f"--resume: cannot read the shards in {Path(path) / SHARDED}: {type(e).__name__}: "
                              f"{e}") from e
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))  # the frozen base: absent
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    rng = Path(path) / _rng_file(rank)
    set_rng_state(torch.load(rng if rng.is_file() else Path(path) / _rng_file(0), weights_only=False))


def load_full_optimizer(model, optimizer, plain_state: dict[str, Any]) -> None:
    """A one-process checkpoint's optimizer state (keyed by parameter position) into the optimizer
    of the same model FSDP2-sharded: keyed by parameter name, each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]  # the optimizer's order
    full = {"state": {names[i]: s for i, s in plain_state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in plain_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def load_master_weights(model, tensors: list[torch.Tensor]) -> None:
    """A one-process --dtype bf16 checkpoint's float32 master weights (its `master_weights`, in
    the order of the model's trainable parameters) into the same model FSDP2-sharded: they become
    its float32 shards (the bf16 weights saved beside them are their rounding)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]  # MasterWeights' order
    if len(tensors) != len(names):
        raise CheckpointError(f"--resume: the checkpoint holds {len(tensors)} master weights, the model trains "
                              f"{len(names)} parameters")
    # strict=False: a tied lm head is the embeddings' parameter, named once here
    set_model_state_dict(model, dict(zip(names, tensors)), options=StateDictOptions(full_state_dict=True, strict=False))


def save_final_gathered(out: str | os.PathLike, model, tokenizer, final_model, world) -> Path:
    """Under torchrun, on every rank: the full weights gathered on rank 0 (on the CPU), made into the
    model to write by `final_model(state dict)` (an unsharded model of the same architecture holding
    them; with LoRA, the adapters merged) and written by `save_final`. CheckpointError on every rank
    when that fails."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    error = None
    if world.is_main:
        try:
            save_final(out, final_model(full), tokenizer)
        except CheckpointError as e:
            error = str(e)
        except Exception as e:  # making the final model of the gathered weights
            error = f"final model not saved: {type(e).__name__}: {e}; the last complete checkpoint is {_last_complete(Path(out))}"
    world_error = world.broadcast(error, "writing the final model")
    if world_error:
        raise CheckpointError(world_error)
    return Path(out) / FINAL
