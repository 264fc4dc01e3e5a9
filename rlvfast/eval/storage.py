"""The files of `python -m rlvfast.eval`: what it reads and writes beside the model.

- OUT/config.json: the settings (`RUN_KEYS`) the samples were made with; `check_run_config`
  refuses a rerun with other ones while OUT/samples.jsonl holds samples.
- OUT/samples.jsonl: one record per sample (`rlvfast.eval.samples`), appended one problem
  at a time by the command; `read_samples` keeps the finished problems and drops (rewrites
  away) a problem an interruption left unfinished.
- OUT/results.json and the PNG plots: `write_outputs`.
- --baseline's results.json: `load_baseline`, checked before any sampling.
- a training run's summary.json beside a model directory: `training_verify_prompt`.

Not here: sampling, grading, the metric math, the command line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from rlvfast.cli import UserError

# Settings a rerun must share with the samples already in OUT/ (the problem list may grow).
RUN_KEYS = ("model", "data", "n", "max_tokens", "temperature", "top_p", "seed", "verify_prompt", "judge",
            "judge_max_tokens", "lengths", "data_split", "problem_field", "answer_field", "id_field")


def check_run_config(out: Path, config: dict) -> None:
    """Writes OUT/config.json (`config`: RUN_KEYS -> value); a rerun with different values is
    refused while OUT/samples.jsonl holds samples (a run that failed before sampling can be
    rerun fixed)."""
    path = out / "config.json"
    samples = out / "samples.jsonl"
    if path.exists() and samples.exists() and samples.stat().st_size > 0:
        old = json.loads(path.read_text())
        diff = [f"{k}={old.get(k)!r} there, {config[k]!r} now" for k in RUN_KEYS if old.get(k) != config[k]]
        if diff:
            raise UserError(f"--out {str(out)!r} holds samples made with other settings ({'; '.join(diff)}); "
                            "use a fresh --out")
    path.write_text(json.dumps(config, indent=2))


def read_samples(path: Path, n: int, repair: bool = True) -> dict[str, list[dict]]:
    """problem id -> its n records. Lines of a problem left unfinished by an interruption (a
    torn last line, or fewer than n samples) are dropped and, with `repair` (this run's own
    file, not a --baseline's), the file is rewritten without them."""
    if not path.exists():
        return {}
    by_problem: dict[str, list[dict]] = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # empty line, or a torn write
        by_problem.setdefault(record["problem_id"], []).append(record)
    complete = {pid: recs for pid, recs in by_problem.items() if len(recs) == n}
    kept = [json.dumps(r) for recs in complete.values() for r in recs]
    if repair and sum(map(len, complete.values())) != sum(1 for line in lines if line.strip()):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return complete


def training_verify_prompt(model: str) -> str | None:
    """The verification prompt a model was trained with: `rlvfast.train` writes RUN/final/,
    RUN/checkpoints/step-N/ and, at the end, RUN/summary.json, whose config holds
    `verify_prompt` (None: the trainer's default, which for the built-in tiny model is
    `TINY_VERIFY_PROMPT`). None when no summary.json is found, or `model` is a hub id."""
    if not os.path.exists(model):  # a hub id: its "parent" would be the working directory
        return None
    model_dir = Path(model).resolve()
    summary = next((d / "summary.json" for d in (model_dir.parent, model_dir.parent.parent)
                    if (d / "summary.json").is_file()), None)
    if summary is None:
        return None
    config = json.loads(summary.read_text()).get("config", {})
    if config.get("verify_prompt") is not None:
        return config["verify_prompt"]
    if config.get("model") == "tiny":
        from rlvfast.models import TINY_VERIFY_PROMPT

        return TINY_VERIFY_PROMPT
    return None


def load_baseline(baseline_dir: str, n: int, num_problems: int) -> dict:
    """The baseline run's results.json, checked before sampling: same n, as many problems."""
    path = Path(baseline_dir) / "results.json"
    try:
        base = json.loads(path.read_text())
        base_shape = (base["n"], base["num_problems"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"--baseline {baseline_dir!r}: {path} is not an eval's results.json ({error!r})") from error
    if base_shape != (n, num_problems):
        raise UserError(f"--baseline {baseline_dir!r} has {base['num_problems']} problems x n={base['n']}, "
                        f"this run {num_problems} x n={n}: not comparable")
    return base


def write_outputs(out: Path, results: dict) -> list[Path]:
    """OUT/results.json and the plots: accuracy against k (overall, per difficulty when there
    are several, against the baseline) and sequential scaling; returns the plot paths."""
    from rlvfast.eval.plots import plot_parallel, plot_sequential

    (out / "results.json").write_text(json.dumps(results, indent=2))
    plots = [plot_parallel(results["parallel"], out / "accuracy_vs_k.png",
                           f"{results['num_problems']} problems, n={results['n']}")]
    for name, block in results["by_difficulty"].items():
        if len(results["by_difficulty"]) > 1:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
            plots.append(plot_parallel(block["parallel"], out / f"accuracy_vs_k_{safe}.png",
                                       f"difficulty {name}: {block['num_problems']} problems, n={block['n']}"))
    if "vs_baseline" in results:
        base = results["vs_baseline"]["baseline_parallel"]
        curves = {"weighted": results["parallel"]["weighted"], "majority": results["parallel"]["majority"],
                  "baseline weighted": base["weighted"], "baseline majority": base["majority"]}
        plots.append(plot_parallel(curves, out / "accuracy_vs_k_vs_baseline.png",
                                   f"this run against {Path(results['vs_baseline']['baseline']).name}"))
    if "sequential" in results:
        plots.append(plot_sequential(results["sequential"], out / "sequential.png"))
    return plots
