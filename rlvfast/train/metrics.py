"""What a run writes about its steps: OUT/metrics.jsonl and the step line of the log.

`json_line` is one line of metrics.jsonl, strict JSON (a NaN or inf value becomes null, which jq
and other parsers accept; `skipped` and `num_bad_steps` say why), `finite_or_none` does the same
to any nested value (summary.json), `truncate` drops the lines an interrupted run wrote after
its last checkpoint, and `show_step` puts a step on the progress bar, or, with no terminal, in
the log every `log_every` steps (`step_line`).

Not here: computing the metrics (`rlvfast.train.rollouts`, the update in `rlvfast.train.loop`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rlvfast.eval.report import ratio


def finite_or_none(value: Any) -> Any:
    """`value` with every NaN or inf float replaced by None (JSON null), in nested dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def json_line(metrics: dict) -> str:
    """One line of metrics.jsonl: strict JSON (NaN / inf -> null), which jq and other parsers accept."""
    return json.dumps(finite_or_none(metrics), allow_nan=False)


def step_line(metrics: dict, num_steps: int) -> str:
    """One step in the log: `step 10/300  reward 0.531  loss/policy ...  1.23 s`."""
    seconds = sum(metrics.get(k, 0.0) for k in ("time/sampling", "time/grading", "time/update"))
    parts = [f"step {metrics['step']}/{num_steps}", f"reward {ratio(metrics['reward'])}"]
    parts += [f"{k} {ratio(metrics.get(k))}" for k in ("loss/policy", "loss/verifier")]
    parts.append(f"verifier accuracy {ratio(metrics['verifier/accuracy'])} "
                 f"(balanced {ratio(metrics['verifier/balanced_accuracy'])})")
    if metrics.get("skipped"):
        parts.append(f"skipped ({metrics['num_bad_steps']} in a row)")
    return "  ".join(parts + [f"{seconds:.2f} s"])


def show_step(bar, metrics: dict, num_steps: int, log_every: int, log) -> None:
    """The step's reward and verifier accuracy on the progress bar; without a terminal (no bar:
    a log file, CI) a `step_line` every `log_every` steps and at the last step (0 = never)."""
    bar.set_postfix(reward=ratio(metrics["reward"]), vacc=ratio(metrics["verifier/balanced_accuracy"]),
                    refresh=False)
    step = metrics["step"]
    if bar.disable and log_every and (step % log_every == 0 or step == num_steps):
        log(step_line(metrics, num_steps))


def truncate(path: Path, step: int) -> None:
    """On resume, drop metric lines the interrupted run wrote after its last checkpoint (`step`)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
