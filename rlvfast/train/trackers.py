"""`--report-to`: where a run's metrics go besides OUT/metrics.jsonl (TRL's names).

    none          nothing (the default)
    tensorboard   event files in OUT/runs (`tensorboard --logdir OUT`; TRL's default is
                  OUT/runs/<date>_<host>, one directory per launch: here one per run, so a
                  --resume continues it); pip install tensorboard
    wandb         a Weights & Biases run: project $WANDB_PROJECT or "rlvfast", name OUT,
                  files under OUT/wandb; pip install wandb
    trackio       a Trackio run: project $TRACKIO_PROJECT or "rlvfast"; pip install trackio

`check_report_to` validates the names when the options are read (a missing package is a
`UserError` before any work starts). `open_trackers(config, resume)` opens every tracker of a
run in `config.out` and closes them when the block ends, however it ends; inside, the loop
calls `log_step` with each line of metrics.jsonl and the run's end calls `log_summary`. Only
finite numbers are logged (None, NaN, inf, bools and strings are left out). The wandb run id
and the Trackio run name are kept in OUT/trackers.json, so a --resume continues the same run;
a fresh run starts a new one. A --resume logs again the steps after its checkpoint: TensorBoard
drops the interrupted run's events from that step on (`SummaryWriter(purge_step=...)`); wandb
ignores a step it already has and keeps the interrupted run's values for it.

Not here: the metrics themselves (`rlvfast.train.loop`, `rlvfast.train.rollouts`).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlvfast.cli import UserError

if TYPE_CHECKING:
    from rlvfast.train.config import TrainConfig

TRACKERS = ("none", "tensorboard", "wandb", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}  # name -> module to import
TENSORBOARD_DIR = "runs"
IDS_FILE = "trackers.json"  # the wandb run id and the Trackio run name, for --resume
DEFAULT_PROJECT = "rlvfast"


def check_report_to(names: list[str]) -> list[str]:
    """The trackers `--report-to names` asks for, without "none" and repeats; a UserError naming
    a bad name (and the choices) or a tracker whose package is not installed (and the pip line)."""
    if isinstance(names, str):
        names = [names]
    chosen = []
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"--report-to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        if name != "none" and name not in chosen:
            chosen.append(name)
    if "none" in names and chosen:
        raise UserError(f"--report-to none cannot go with other trackers, got {' '.join(names)}")
    for name in chosen:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"--report-to {name} needs the {PACKAGES[name]} package: pip install {PACKAGES[name]}")
    return chosen


def loggable(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of `values`, nested dicts flattened to "a/b" keys; bools, None,
    NaN, inf and strings left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out |= loggable(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = value
    return out


class Trackers:
    """The open trackers of one run; each has `log(values, step)`, `summary(values, step)`, `close()`."""

    def __init__(self, trackers: list) -> None:
        self.trackers = trackers

    def log_step(self, metrics: dict[str, Any]) -> None:
        """One line of metrics.jsonl, at its "step"."""
        values = loggable({k: v for k, v in metrics.items() if k != "step"})
        for tracker in self.trackers:
            tracker.log(values, metrics["step"])

    def log_summary(self, summary: dict[str, Any], step: int) -> None:
        """The end-of-run numbers (the evaluations, the wall time; not the options) at `step`."""
        values = loggable({k: v for k, v in summary.items() if k not in ("config", "steps")})
        for tracker in self.trackers:
            tracker.summary(values, step)

    def close(self) -> None:
        """Closes every tracker, even after one fails to; then raises the first failure."""
        failures = []
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as e:  # the next tracker still closes
                failures.append(e)
        if failures:
            raise failures[0]


NO_TRACKERS = Trackers([])  # --report-to none


@contextmanager
def open_trackers(config: TrainConfig, resume: bool) -> Iterator[Trackers]:
    """Every tracker of `config.report_to` opened for the run in `config.out` (continued when
    `resume`), closed when the block ends."""
    names = [name for name in config.report_to if name != "none"]
    ids = _run_ids(Path(config.out), names, resume)
    opened: list = []
    try:
        for name in names:
            opened.append(_OPENERS[name](config, ids))
        yield Trackers(opened)
    finally:
        Trackers(opened).close()


def _run_ids(out: Path, names: list[str], resume: bool) -> dict[str, str]:
    """OUT/trackers.json: on --resume the ids it holds (new ones for trackers it lacks), else new ones."""
    path = out / IDS_FILE
    ids = json.loads(path.read_text()) if resume and path.is_file() else {}
    fresh = {"wandb": secrets.token_hex(4), "trackio": f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}"}
    missing = {name: fresh[name] for name in names if name in fresh and name not in ids}
    if missing:
        ids |= missing
        path.write_text(json.dumps(ids, indent=1) + "\n")
    return ids


def _project(env: str) -> str:
    return os.environ.get(env) or DEFAULT_PROJECT


class TensorBoardTracker:
    """Scalars in OUT/runs. The writer opens at the first value: a run's first step purges what an
    interrupted run (or an overwritten one) logged from that step on."""

    def __init__(self, config: TrainConfig, ids: dict[str, str]) -> None:
        self.log_dir = Path(config.out) / TENSORBOARD_DIR
        self.writer = None

    def _writer(self, purge_step: int | None):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        return self.writer

    def log(self, values: dict[str, float], step: int) -> None:
        writer = self._writer(purge_step=step)
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def summary(self, values: dict[str, float], step: int) -> None:
        writer = self._writer(purge_step=None)
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbTracker:
    """A wandb run named OUT, its config the run's options; resumed by the id in OUT/trackers.json."""

    def __init__(self, config: TrainConfig, ids: dict[str, str]) -> None:
        wandb = importlib.import_module("wandb")
        self.run = wandb.init(project=_project("WANDB_PROJECT"), name=config.out, id=ids["wandb"],
                              resume="allow", dir=config.out, config=config.to_dict())

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, float], step: int) -> None:
        self.run.summary.update(values)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A Trackio run named as OUT/trackers.json says, its config the run's options."""

    def __init__(self, config: TrainConfig, ids: dict[str, str]) -> None:
        self.trackio = importlib.import_module("trackio")
        self.trackio.init(project=_project("TRACKIO_PROJECT"), name=ids["trackio"], config=config.to_dict(),
                          resume="allow")

    def log(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def summary(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


_OPENERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}
