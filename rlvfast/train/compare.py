"""The paper's comparison (`python -m rlvfast.train` by default; `--compare`), in one process or
under torchrun.

In order: the base model (the runs' start) evaluated on the held-out splits, its pass@1 and
its own P("Yes") as a judge (OUT/base_model.json); the base method, lambda = 0, trained into
OUT/base_method (a run directory like any other); RL^V, the config as given, trained into
OUT; both final models evaluated (`eval_samples` per problem); then the comparison
(`rlvfast.eval.compare`: the table, OUT/comparison.png) and OUT/summary.json, with the time
per phase. One grader and one tokenizer serve both runs (`loop.Shared`).

Under torchrun every rank runs all of it: both trainings are FSDP2-sharded as a lone torchrun
run is, each evaluation is split over the ranks (`report.evaluate_pools`), every rank computes
the summary and rank 0 alone logs and writes OUT's files (the other ranks read
OUT/base_method/final: --out is on a filesystem every node shares, as for any torchrun run).

The base method's config is `dataclasses.replace(config, verifier_coef=0.0,
out=OUT/base_method, compare=False)`: the same start, seed and problems; each run seeds itself
as a lone run does, so the two first steps draw the same samples.

--resume: RL^V resumes as a lone run does (or starts, if the process ended before its first
checkpoint); the base method is reused when OUT/base_method/final and its summary.json are
there for the same --steps, else resumed from its latest checkpoint, or started; the base
model's evaluation is reused from OUT/base_model.json. --overwrite deletes all of it
(`run_dir.RUN_FILES`). Not here: one run (`rlvfast.train.loop`), the comparison's math,
table and plot (`rlvfast.eval.compare`).
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from rlvfast.eval.compare import Evaluated, compare, format_comparison, plot_comparison
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import distributed, loop, run_dir, setup, trackers
from rlvfast.train.config import TrainConfig
from rlvfast.train.report import eval_problems, evaluate_pools

BASE_DIR = "base_method"
BASE_MODEL_FILE = "base_model.json"
PLOT_FILE = "comparison.png"
STEP_TIMES = ("sampling", "grading", "update")  # metrics.jsonl's time/<phase>, summed over steps


def base_method_config(config: TrainConfig) -> TrainConfig:
    """The base method: lambda = 0 into OUT/base_method, resumed when it has a checkpoint."""
    out = Path(config.out) / BASE_DIR
    return replace(config, verifier_coef=0.0, out=str(out), compare=False, overwrite=False,
                   resume=config.resume and _has_checkpoint(out))


def check_resumable(config: TrainConfig) -> None:
    """--resume needs a checkpoint of RL^V or of the base method; else the lone run's UserError."""
    if not (_has_checkpoint(Path(config.out)) or _has_checkpoint(Path(config.out) / BASE_DIR)):
        setup.latest_checkpoint(config.out)


def _has_checkpoint(out: Path) -> bool:
    try:
        ckpt.latest_checkpoint(out)
    except ckpt.CheckpointError:
        return False
    return True


# ----------------------------------------------------------------------------- the comparison
def train_compare(config: TrainConfig, shared: loop.Shared, log) -> dict:
    """Base model, base method, RL^V, both evaluated, the comparison; returns the summary."""
    wall_start = time.perf_counter()
    out = Path(config.out)
    splits = eval_problems(config)
    t0 = time.perf_counter()
    base_model = _evaluate_base_model(config, shared, splits, log)
    eval_seconds = time.perf_counter() - t0

    base_config = base_method_config(config)
    _train_base_method(base_config, shared, log)
    rlv_resume = config.resume and _has_checkpoint(out)
    with _open_trackers(config, rlv_resume, shared.world) as tracked:
        rlv_run, _ = loop.fit(replace(config, resume=rlv_resume), shared, {}, log, tracked)
        t0 = time.perf_counter()
        evaluated = _evaluate_finals(config, shared, rlv_run, splits)
        eval_seconds += time.perf_counter() - t0
        summary = {"config": config.to_dict(), "steps": config.steps,
                   **compare(evaluated["base_method"], evaluated["rlv"], base_model)}
        summary["wall_seconds"] = time.perf_counter() - wall_start
        summary["time"] = _phase_times([base_config, config], eval_seconds, summary["wall_seconds"])
        tracked.log_summary(summary, config.steps)
    if shared.world.is_main:
        _write_base_summary(base_config, summary["base_method"])
        loop.write_summary(out, summary)
        plot_comparison(summary, out / PLOT_FILE)
    log(format_comparison(summary))
    log(f"done in {summary['wall_seconds']:.0f} s; RL^V at {out / 'final'}, the base method at "
        f"{out / BASE_DIR / 'final'}, the plot at {out / PLOT_FILE}")
    return summary


def _open_trackers(config: TrainConfig, resume: bool, world: distributed.World):
    """`trackers.open_trackers` on rank 0; none on the other ranks."""
    return trackers.open_trackers(config, resume) if world.is_main else nullcontext(trackers.NO_TRACKERS)


def _evaluate_base_model(config: TrainConfig, shared: loop.Shared, splits: dict, log) -> dict:
    """split -> the start's pass@1 and verifier metrics (`loop.start_eval_samples` per
    problem), kept in OUT/base_model.json; a --resume reads it back (rank 0, for every rank)."""
    path, world = Path(config.out) / BASE_MODEL_FILE, shared.world
    saved = json.loads(path.read_text()) if world.is_main and config.resume and path.is_file() else None
    if (saved := world.broadcast(saved, "reading base_model.json")) is not None:
        return saved
    from rlvfast.models import load_model
    from rlvfast.sampler import Sampler

    model, tokenizer = load_model(setup.start_path(config, log), device=shared.device)
    shared.tokenizer = tokenizer if shared.tokenizer is None else shared.tokenizer
    sampler = Sampler(model, shared.tokenizer, verify_prompt=config.resolved_verify_prompt())
    evaluated = _evaluate({"base model": sampler}, splits, config, shared, loop.start_eval_samples(config))
    result = {split: e.summary for split, e in evaluated["base model"].items()}
    if world.is_main:
        path.write_text(json.dumps(result, indent=1))
    log("base model: " + ", ".join(f"{s} pass@1 {r['pass@1']:.3f}" for s, r in result.items()))
    return result


def _train_base_method(config: TrainConfig, shared: loop.Shared, log) -> None:
    """Trains the base method into its OUT, or reuses it (see the module's docstring; rank 0
    decides for every rank and prepares its OUT)."""
    out, world = Path(config.out), shared.world
    summary_path = out / "summary.json"
    reuse = world.is_main and config.resume and (out / "final").is_dir() and summary_path.is_file() \
        and json.loads(summary_path.read_text()).get("steps") == config.steps
    if world.broadcast(reuse, "checking the base method's final model"):
        log(f"base method: reusing {out / 'final'}")
        return
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        run_dir.prepare(out, config.resume, overwrite=not config.resume)  # no checkpoint: start it afresh
    world.barrier("waiting for rank 0 to prepare the base method's directory")
    with _open_trackers(config, config.resume, world) as tracked:  # its own: OUT/base_method/runs, ...
        loop.fit(config, shared, {}, log, tracked)
    if world.is_main:
        _write_base_summary(config, {})


def _write_base_summary(config: TrainConfig, evaluation: dict) -> None:
    """OUT/base_method/summary.json: its options (`rlvfast.eval` reads the verify prompt there),
    its steps and, once measured, its final evaluation per split."""
    summary = {"config": config.to_dict(), "steps": config.steps} | ({"eval": evaluation} if evaluation else {})
    loop.write_summary(Path(config.out), summary)


def _evaluate_finals(config: TrainConfig, shared: loop.Shared, rlv_run, splits: dict) -> dict:
    """"base_method" and "rlv" -> split -> Evaluated, `eval_samples` per problem; the base
    method's model is read back from OUT/base_method/final (on every rank), RL^V's sampled
    on its unsharded weights."""
    from rlvfast.models import load_model
    from rlvfast.sampler import Sampler

    base_model, _ = load_model(str(Path(config.out) / BASE_DIR / "final"), device=shared.device)
    base_sampler = Sampler(base_model, shared.tokenizer, verify_prompt=config.resolved_verify_prompt())
    rlv_run.model.eval()
    with distributed.full_weights(rlv_run.model):
        return _evaluate({"base_method": base_sampler, "rlv": rlv_run.sampler}, splits, config, shared,
                         config.eval_samples)


def _evaluate(samplers: dict, splits: dict, config: TrainConfig, shared: loop.Shared, num_samples: int) -> dict:
    """name -> split -> Evaluated, each sampler on each split (seed 1, as a lone run's table;
    under torchrun each rank samples its share), under one "evaluation" progress bar (rank 0's)."""
    out: dict = {name: {} for name in samplers}
    with tqdm(total=len(samplers) * len(splits), desc="evaluation", disable=None if shared.world.is_main else True,
              file=sys.stderr) as bar:
        for name, sampler in samplers.items():
            for split, problems in splits.items():
                summary, pools = evaluate_pools(sampler, problems, config, shared.grader, seed=1,
                                                num_samples=num_samples, world=shared.world)
                out[name][split] = Evaluated(summary, pools)
                bar.update(1)
    return out


def _phase_times(configs: list[TrainConfig], eval_seconds: float, wall_seconds: float) -> dict:
    """Seconds per phase: sampling, grading and update summed over both runs' steps (from their
    metrics.jsonl, so a resumed run's earlier steps count), the evaluations, and "other": the
    rest of the wall time (loading models, the checkpoints, the table), 0 when earlier steps
    of a resumed run make the others add up to more."""
    times = dict.fromkeys(STEP_TIMES, 0.0)
    for config in configs:
        for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines():
            metrics = json.loads(line)
            for phase in STEP_TIMES:
                times[phase] += metrics.get(f"time/{phase}") or 0.0
    times["eval"] = eval_seconds
    times["other"] = max(0.0, wall_seconds - sum(times.values()))
    return times
