"""`python -m rlvfast.train`: RL^V, one model trained as reasoner and verifier on its own rollouts.

    J = J_RL + lambda * J_verify            (arXiv 2505.04842)

`train`, in order: setup (`rlvfast.train.setup`); resume from the latest checkpoint, or evaluate
the starting point; the steps, with a checkpoint every `checkpoint_every`; the final model; the
table (`rlvfast.train.report`). One step, `rl_step`: sample `group_size` solutions to each of
`prompts_per_step` problems, grade them (the time-limited grader or a custom reward), group-
relative advantages (`rlvfast.train.rollouts`); then `update`: per micro-batch ONE forward per
sample over `[prompt, solution, verify prompt]` (`rlvfast.train.forward`) gives the policy rows
(clipped loss with the sampler's old log-probs) and the verifier row (-log P(label), Yes/No from
the reward); backward; clip; AdamW step. Its first forward also gives P("Yes") BEFORE the
update, logged as the verifier's accuracy on fresh samples (lambda = 0: the sampler scores).
The math: `rlvfast.train.loss`; options: `rlvfast.train.config` (`--help`); files:
`rlvfast.train.checkpoint`, `rlvfast.train.metrics`, `rlvfast.train.run_dir` (OUT's lock, the
fresh / --resume / --overwrite rule). With no arguments: the tiny model, warm-started
(`rlvfast.train.warm_start`), and the paper's comparison (`rlvfast.train.compare`: the base
method, lambda = 0, then RL^V, both from that start, built on `fit`, one table on held-out `test`
and `hard` problems); `--no-compare`: RL^V alone and its table.
A user's error is a `UserError` (one line, exit 2, `rlvfast.cli`); a run that cannot go on, a
`TrainingError` (one line, exit 1). Under `torchrun` (`rlvfast.train.distributed`) each rank samples
its share of the step's problems and the update is FSDP2-sharded; a failed collective is one line
naming the rank, exit 1.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from rlvfast.cli import run_command
from rlvfast.sampler import Sampler, SamplingParams, format_prompt
from rlvfast.tasks.grading import Grader
from rlvfast.tasks.problems import Problem
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import forward as train_forward
from rlvfast.train import metrics as metrics_log
from rlvfast.train import distributed, dynamic_sampling, heads, precision, run_dir, setup, trackers
from rlvfast.train.config import TrainConfig, parse_config
from rlvfast.train.loss import LossConfig, Sample, build_rows, rlv_loss
from rlvfast.train.report import eval_problems, evaluate, format_table
from rlvfast.train.rollouts import (VINE_COUNTS, StepRollouts, WholeBatch, problems_for_step, rollout_metrics,
                                    score_rollouts, step_seed, to_samples, verifier_step_metrics, vine_advantages,
                                    vine_value_metrics)

PROG = "rlvfast.train"


class TrainingError(RuntimeError):
    """The run cannot go on (NaN streak, the final model not written); printed as one line, exit 1."""


@dataclass(slots=True)
class Run:
    """What every step uses: the model and its helpers, built once by `train`."""
    config: TrainConfig
    model: torch.nn.Module
    tokenizer: object
    sampler: object
    optimizer: torch.optim.Optimizer
    grader: object
    reward_fn: object
    loss_config: LossConfig
    ref_model: torch.nn.Module | None
    device: torch.device
    scheduler: object = None  # the learning-rate schedule `train` steps (None: `rl_step` alone)
    fast_forward: bool = True  # False: HF's padded forward in `update` (the reference)
    adapter: object = None  # --lora-r: the PeftModel around `model`, whose save_pretrained writes the adapter
    master: precision.MasterWeights | None = None  # --dtype bf16, full fine-tune: what the optimizer steps
    trackers: trackers.Trackers = trackers.NO_TRACKERS  # --report-to: each step's metrics go there too
    world: distributed.World = distributed.SINGLE  # under torchrun: this rank; the model is FSDP2-sharded
    problems: list[Problem] | None = None  # the training problems, which --dynamic-sampling draws more from

    @property
    def step_params(self) -> list[torch.nn.Parameter]:
        """What the optimizer steps (and the gradient clipping measures)."""
        return self.master.params if self.master is not None else precision.trainable(self.model)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.sampler.eos_ids[0]


@dataclass(slots=True)
class Shared:
    """What the runs of one process share: the training problems, the reward function, the
    device, the grader (one worker pool) and the tokenizer (None until the first run loads it)."""
    problems: list[Problem]
    reward_fn: object
    device: torch.device
    grader: object
    tokenizer: object = None
    world: distributed.World = distributed.SINGLE


# ----------------------------------------------------------------------------- the run
def train(config: TrainConfig, log=print) -> dict:
    """The whole run; returns the summary (also written to OUT/summary.json). Holds OUT's lock
    throughout; a fresh run needs an empty OUT (or --overwrite), see `rlvfast.train.run_dir`.
    With `config.is_comparison`: the base method and RL^V, then the comparison
    (`rlvfast.train.compare`). Under torchrun every rank runs it (`rlvfast.train.distributed`);
    rank 0 alone logs, holds the lock and writes OUT's files but the sharded checkpoints."""
    device = setup.pick_device(config.device)
    world = distributed.init(device, config.dist_timeout)
    try:
        return _train_in_world(config, world, distributed.device_of(world, device), log)
    finally:
        distributed.destroy()  # torchrun's group, or the one-process group of a sharded --resume


def _train_in_world(config: TrainConfig, world: distributed.World, device: torch.device, log) -> dict:
    from rlvfast.train import compare  # it builds on this module's `fit`

    problems = setup.load_training_problems(config)  # a bad --data fails here, before anything slow
    reward_fn = setup.load_reward_fn(config.reward) if config.reward else None
    if config.resume and config.is_comparison:  # nothing to resume: an error before OUT is created
        compare.check_resumable(config)
    elif config.resume and ckpt.is_sharded(setup.latest_checkpoint(config.out)) and not world.is_distributed:
        world = distributed.join_alone(device, config.dist_timeout)  # a torchrun checkpoint, resumed in one process
    if world.is_distributed:
        distributed.check_divides(world, config.prompts_per_step)
        log = log if world.is_main else _quiet
    with _hold_out(config, world):
        with Grader(timeout=config.grader_timeout) as grader:  # the worker pool ends with the run, however it ends
            shared = Shared(problems, reward_fn, device, grader, world=world)
            if config.is_comparison:
                return compare.train_compare(config, shared, log)
            return _train(config, shared, log)


def _quiet(*args) -> None:
    """The log of ranks other than 0."""


@contextmanager
def _hold_out(config: TrainConfig, world: distributed.World):
    """Rank 0 holds OUT's lock and prepares it (`run_dir`); the other ranks wait for that."""
    if not world.is_main:
        world.barrier("waiting for rank 0 to prepare --out")
        yield
        return
    with run_dir.hold_lock(config.out):
        run_dir.prepare(config.out, config.resume, config.overwrite)
        world.barrier("waiting for rank 0 to prepare --out")
        yield


def _train(config: TrainConfig, shared: Shared, log) -> dict:
    wall_start = time.perf_counter()
    out = Path(config.out)
    splits = eval_problems(config) if config.has_table else {}
    is_main = shared.world.is_main
    with trackers.open_trackers(config, config.resume) if is_main else nullcontext(trackers.NO_TRACKERS) as tracked:
        run, warm_eval = fit(config, shared, splits, log, tracked)
        summary = _summary(run, splits, warm_eval)
        summary["wall_seconds"] = time.perf_counter() - wall_start
        tracked.log_summary(summary, config.steps)
    if is_main:
        write_summary(out, summary)
    if splits:
        log(format_table(summary))
    log(f"done in {summary['wall_seconds']:.0f} s; model at {out / 'final'}, metrics in {out / 'metrics.jsonl'}")
    return summary


def write_summary(out: Path, summary: dict) -> None:
    """OUT/summary.json: strict JSON (NaN / inf -> null)."""
    (out / "summary.json").write_text(json.dumps(metrics_log.finite_or_none(summary), indent=1, allow_nan=False))


def fit(config: TrainConfig, shared: Shared, splits: dict[str, list[Problem]], log,
        tracked: trackers.Trackers = trackers.NO_TRACKERS) -> tuple[Run, dict]:
    """One run in OUT, from its start or its latest checkpoint (`config.resume`) to
    `config.steps`, then OUT/final; each step's metrics also go to `tracked`. Returns the run
    and its start's evaluation on `splits` (`_evaluate_start`; a resumed run's comes from its checkpoint)."""
    resume_from, state = setup.resume_state(config) if config.resume else (None, None)
    setup.seed_everything(config.seed)
    run = _build_run(config, shared, resume_from, log)
    run.trackers, run.problems = tracked, shared.problems
    if state is not None:
        start_step, num_bad, warm_eval = _restore(run, resume_from, state)
        log(f"resuming from {resume_from} at step {start_step}")
    else:
        start_step, num_bad, warm_eval = 0, 0, _evaluate_start(run, splits, log)
    _run_steps(run, shared.problems, (start_step, num_bad), warm_eval, log)
    if run.adapter is not None and not run.world.is_distributed:  # final/ is the plain model: the adapters
        run.model, run.adapter = run.adapter.merge_and_unload(), None  # merged (sharded: on rank 0, `_save_final`)
    _save_final(run, Path(config.out) / "metrics.jsonl")
    return run, warm_eval


def _restore(run: Run, path: Path, state: dict) -> tuple[int, int, dict]:
    """A checkpoint's optimizer, schedule and RNG state put back (the weights are loaded already,
    but for a sharded checkpoint's); returns (step, skipped steps in a row, the start's evaluation)."""
    if ckpt.is_sharded(path):  # torchrun's: DCP reshards to this world size
        ckpt.load_sharded(path, run.model, run.optimizer, run.world.rank)
        run.scheduler.load_state_dict(state["scheduler"])
        return state["step"], state["num_bad_steps"], state.get("warm_start_eval", {})
    if run.world.is_distributed:  # one process's checkpoint, its weights loaded: shard its optimizer state
        ckpt.load_full_optimizer(run.model, run.optimizer, state["optimizer"])
        if "master_weights" in state:  # --dtype bf16: its float32 master weights become the shards
            ckpt.load_master_weights(run.model, state["master_weights"])
        state = {**state, "optimizer": None}
    result = setup.restore(run.optimizer, run.scheduler, state)
    if run.master is not None:
        run.master.load_state_dict(state["master_weights"])
    return result


def _run_steps(run: Run, problems: list[Problem], start: tuple[int, int], warm_eval: dict, log) -> None:
    """The steps from `start` = (step, steps skipped in a row) to config.steps: metrics.jsonl,
    the progress bar ("RL^V", or "base method" when lambda = 0), checkpoints."""
    config, out = run.config, Path(run.config.out)
    start_step, num_bad = start
    metrics_path = out / "metrics.jsonl"
    if run.world.is_main:
        metrics_log.truncate(metrics_path, start_step)
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps,
               desc="RL^V" if config.verifier_coef > 0 else "base method",
               disable=None if run.world.is_main else True, file=sys.stderr)
    with open(metrics_path, "a") if run.world.is_main else open(os.devnull, "w") as metrics_file:
        for step in bar:
            batch = problems_for_step(problems, step, config.prompts_per_step, config.seed)
            metrics, result = rl_step(run, batch, step)
            metrics["lr"] = run.scheduler.get_last_lr()[0]
            num_bad = _count_bad(run, result, num_bad, step, log)
            metrics["num_bad_steps"] = num_bad
            metrics_file.write(metrics_log.json_line(metrics) + "\n")
            metrics_file.flush()
            run.trackers.log_step(metrics)
            metrics_log.show_step(bar, metrics, config.steps, config.log_every, log)
            if num_bad >= config.max_bad_steps:
                last = ckpt.read_marker(out)
                raise TrainingError(f"{num_bad} consecutive steps with a non-finite loss or gradient "
                                    f"(last at step {step + 1}); stopping. The last good checkpoint "
                                    f"({last or 'none written yet'}) is intact; try a lower --lr.")
            # not during a streak of skipped steps: the checkpoint the error names stays the last good one
            if num_bad == 0 and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                _save_checkpoint(run, step + 1, _trainer_state(run, step + 1, num_bad, warm_eval), log)
    bar.close()


def _build_run(config: TrainConfig, shared: Shared, resume_from: Path | None, log) -> Run:
    """The model (and reference) loaded, its sampler and optimizer; the first run's tokenizer
    becomes the shared one, a later run uses it (the same model family: the same tokenizer)."""
    weights_from = None if resume_from is not None and ckpt.is_sharded(resume_from) else resume_from
    model, tokenizer, ref_model, adapter = setup.load_models(config, shared.device, weights_from, log)
    shared.tokenizer = tokenizer if shared.tokenizer is None else shared.tokenizer
    if shared.world.is_distributed:  # FSDP2; the update's packed forward runs as calls of its units
        distributed.shard(model, config.dtype)
        distributed.register_unit_calls(model)
    with distributed.full_weights(model):  # the Sampler keeps the lm head's unsharded tensor, refilled each unshard
        sampler = Sampler(model, shared.tokenizer, verify_prompt=config.resolved_verify_prompt())
    params = precision.trainable(model)
    master = precision.MasterWeights(params) if precision.MasterWeights.needed(params) else None
    optimizer, scheduler = setup.make_optimizer(master.params if master else params, config)
    return Run(config, model, shared.tokenizer, sampler, optimizer, shared.grader, shared.reward_fn,
               config.loss_config(), ref_model, shared.device, scheduler, adapter=adapter, master=master,
               world=shared.world)


def _evaluate_start(run: Run, splits: dict[str, list[Problem]], log) -> dict:
    """pass@1 of the starting point per split, for the final table ({} without a table)."""
    if not splits:
        return {}
    t0 = time.perf_counter()
    num_samples = start_eval_samples(run.config)
    with distributed.full_weights(run.model):  # each rank samples its share of each split (`evaluate`)
        warm_eval = {s: evaluate(run.sampler, p, run.config, run.grader, seed=1, num_samples=num_samples,
                                 world=run.world) for s, p in splits.items()}
    log(f"warm start evaluated in {time.perf_counter() - t0:.0f} s: " +
        ", ".join(f"{s} pass@1 {r['pass@1']:.3f}" for s, r in warm_eval.items()))
    return warm_eval


def start_eval_samples(config: TrainConfig) -> int:
    """Samples per problem of the start's evaluation: only its pass@1 and verifier metrics are
    reported, and a few samples of many problems measure them."""
    return min(4, config.eval_samples)


def _count_bad(run: Run, result: dict, num_bad: int, step: int, log) -> int:
    """Steps skipped in a row after this one: a skipped step is logged, a good one advances the schedule."""
    if not result["skipped"]:
        run.scheduler.step()
        return 0
    log(f"step {step + 1}: non-finite loss {result['loss']} or grad norm {result['grad_norm']}: "
        f"skipped ({num_bad + 1} in a row)")
    return num_bad + 1


def _trainer_state(run: Run, step: int, num_bad: int, warm_eval: dict) -> dict:
    """What a checkpoint holds besides the weights; sharded, the optimizer state and each rank's
    RNG state are saved beside it (`ckpt.save_sharded_checkpoint`)."""
    if run.world.is_distributed:
        return {"step": step, "scheduler": run.scheduler.state_dict(), "num_bad_steps": num_bad,
                "warm_start_eval": warm_eval, "config": run.config.to_dict(), "world_size": run.world.size}
    state = {"step": step, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "rng": ckpt.rng_state(), "num_bad_steps": num_bad, "warm_start_eval": warm_eval,
             "config": run.config.to_dict()}
    if run.master is not None:
        state["master_weights"] = run.master.state_dict()
    return state


def _summary(run: Run, splits: dict[str, list[Problem]], warm_eval: dict) -> dict:
    """The options, and with a table the start's and the final model's evaluation per split."""
    summary: dict = {"config": run.config.to_dict(), "steps": run.config.steps}
    if splits:
        run.model.eval()
        summary["warm_start"] = warm_eval
        with distributed.full_weights(run.model):  # each rank samples its share of each split (`evaluate`)
            summary["eval"] = {s: evaluate(run.sampler, p, run.config, run.grader, seed=1, world=run.world)
                               for s, p in splits.items()}
    return summary


# ----------------------------------------------------------------------------- one step
def rl_step(run: Run, batch: list[Problem], step: int) -> tuple[dict, dict]:
    """Sample, grade, advantages, update: one RL^V step. Returns (metrics, update result)."""
    config, sampler, world = run.config, run.sampler, run.world
    t0 = time.perf_counter()
    batch, _ = distributed.local_slice(world, batch)  # this rank's whole groups
    rolled, seed, (t1, t2) = _roll_out(run, batch, step)
    outputs, rewards, num_timeouts, num_errors = rolled.outputs, rolled.rewards, rolled.num_timeouts, rolled.num_errors
    completions = [c for o in outputs for c in o.completions]
    token_advantages, vine_metrics = None, {}
    if config.algo == "vineppo":  # the Monte Carlo step values: more sampling and grading
        rollouts = StepRollouts(outputs, rolled.problems, rolled.prompts, rewards, seed)
        token_advantages, vine_metrics = _vine_advantages(run, rollouts, sampling_seconds=t1 - t0)
    whole = None
    if world.is_distributed:  # the loss weights are normalized over every rank's samples
        whole = WholeBatch(world.gather(rewards, "gathering the rewards"),
                           world.gather([len(c.token_ids) for c in completions], "gathering the lengths"),
                           world.rank * len(completions))  # every rank holds as many (its share of each round)
    samples = to_samples(outputs, rewards, config, sampler.yes_id, sampler.no_id, whole, token_advantages,
                         is_policy=rolled.is_policy)
    run.model.train()
    result = update(run, samples)
    p_yes = result.pop("p_yes")
    t3 = time.perf_counter()

    if world.is_distributed:  # the metrics of the whole step (rank order: the one-process order)
        rewards, completions = whole.rewards, world.gather(completions, "gathering the completions")
        p_yes = world.gather(p_yes, "gathering P(Yes)")
        num_timeouts, num_errors = (int(x) for x in world.sum([num_timeouts, num_errors], "summing grader counts"))
    in_update = config.verifier_coef > 0
    metrics = {"step": step + 1, **rollout_metrics(rewards, completions, config.group_size), **result,
               **verifier_step_metrics(p_yes if in_update else [c.score for c in completions], rewards)}
    metrics |= {"grader/timeouts": num_timeouts, "grader/errors": num_errors, "time/sampling": t1 - t0,
                "time/grading": t2 - t1, "time/update": t3 - t2 - vine_metrics.get("time/mc", 0.0),
                "tokens_per_second": sum(len(c.token_ids) for c in completions) / (t3 - t0)}
    return metrics | vine_metrics | rolled.metrics, result


def _roll_out(run: Run, batch: list[Problem], step: int) -> tuple[dynamic_sampling.Rollouts, int, tuple[float, float]]:
    """This rank's rollouts of `batch`, graded (with --dynamic-sampling, the further rounds too):
    (the rollouts, their sampling seed, the clock after sampling and after grading)."""
    config = run.config
    prompts = [format_prompt(run.tokenizer, p.problem) for p in batch]
    run.model.eval()
    params = SamplingParams(n=config.group_size, max_tokens=config.max_new_tokens,
                            temperature=config.temperature, seed=step_seed(config.seed, step))
    # P("Yes") of every sample before the update: with the verifier in the update (lambda > 0) its
    # first forward gives it (same rows, same weights); the base method asks the sampler for it
    with distributed.full_weights(run.model):  # sharded: every rank samples on the whole weights
        outputs = run.sampler.generate(prompts, params, score=config.verifier_coef == 0)
    t1 = time.perf_counter()
    rewards, num_timeouts, num_errors = score_rollouts(outputs, batch, prompts, run.grader, run.reward_fn)
    rolled = dynamic_sampling.Rollouts(batch, prompts, outputs, rewards, num_timeouts, num_errors)
    if config.dynamic_sampling:  # DAPO: more problems until prompts_per_step groups have varied rewards
        rolled = dynamic_sampling.fill(run, rolled, step)  # time/grading holds these rounds (time/dynamic_sampling)
    return rolled, params.seed, (t1, time.perf_counter())


def _vine_advantages(run: Run, rollouts: StepRollouts, sampling_seconds: float) -> tuple[list[torch.Tensor], dict]:
    """--algo vineppo: the rollouts' per-token advantages and vine/* metrics (`vine_advantages`), with
    time/mc (the whole Monte Carlo phase) and vine/mc_time_share, the continuations' share of
    the step's sampling time (rollouts and continuations). Under torchrun each rank continues its
    own rollouts (local advantages; a continuation's stream is keyed by its state, so they are
    one process's); the value metrics are over every rank's rollouts, the counts summed (a state
    shared by groups on two ranks is continued, and counted, on both), the times this rank's."""
    t0 = time.perf_counter()
    grade = partial(score_rollouts, grader=run.grader, reward_fn=run.reward_fn)
    with distributed.full_weights(run.model):
        advantages, values, metrics = vine_advantages(run.sampler, rollouts, grade, run.config)
    if run.world.is_distributed:
        values = run.world.gather(values, "gathering the state values")
        counts = run.world.sum([metrics[k] for k in VINE_COUNTS], "summing the Monte Carlo counts")
        metrics |= {k: int(n) for k, n in zip(VINE_COUNTS, counts)}
    mc = metrics["time/mc_sampling"]
    metrics = vine_value_metrics(values) | metrics | {"time/mc": time.perf_counter() - t0,
                                                      "vine/mc_time_share": mc / (sampling_seconds + mc)}
    return advantages, metrics


# ----------------------------------------------------------------------------- one update
LOSS_PARTS = ("policy_loss", "verifier_loss", "kl", "num_clipped", "logprob_gap", "num_capped")


def update(run: Run, samples: list[Sample]) -> dict:
    """ppo_epochs optimizer steps over the rollouts; returns the metrics (or skipped=True) and
    "p_yes": with the verifier in the loss (lambda > 0), P("Yes") of every sample before the
    update, read off the first forward's verifier rows (the sampler's score, for free), else []."""
    config = run.config
    chunks = [samples[i:i + config.micro_batch] for i in range(0, len(samples), config.micro_batch)]
    rows = [build_rows(c, run.sampler.verify_ids, run.sampler.eos_ids, run.pad_id, config.verifier_coef > 0)
            .to(run.device) for c in chunks]
    if run.ref_model is not None:
        heads.add_ref_logprobs(run.ref_model, rows, config.temperature, run.device, config.dtype)
    if run.fast_forward and train_forward.supports(run.model):  # shared prompts, only the read rows
        inputs = [train_forward.read_plan(r, [max(0, len(s.prompt_ids) - 1) for s in c]) for r, c in zip(rows, chunks)]
    else:
        inputs = [(None, r) for r in rows]
    num_tokens = sum(int(r.policy_targets.numel()) for r in rows)
    if run.world.is_distributed:
        num_tokens = int(run.world.sum([num_tokens], "summing the token count")[0])
    p_yes = []
    for epoch in range(config.ppo_epochs):
        totals, loss_sum, grad_norm = _backward(run, inputs, p_yes if epoch == 0 and config.verifier_coef > 0 else None)
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
            run.optimizer.zero_grad(set_to_none=True)
            return {"skipped": True, "loss": loss_sum, "grad_norm": grad_norm, "p_yes": p_yes}
        run.optimizer.step()
        if run.master is not None:
            run.master.put_weights()
    return {"skipped": False, "loss": totals["policy_loss"] + config.kl_coef * totals["kl"]
            + config.verifier_coef * totals["verifier_loss"],
            "loss/policy": totals["policy_loss"], "loss/verifier": totals["verifier_loss"], "kl": totals["kl"],
            "clip_ratio": totals["num_clipped"] / max(1, num_tokens), "grad_norm": grad_norm,
            "old_logprob_abs_diff": totals["logprob_gap"] / max(1, num_tokens), "num_train_tokens": num_tokens,
            "p_yes": p_yes} | _correction_metrics(config, totals, num_tokens)


def _correction_metrics(config, totals: dict, num_tokens: int) -> dict:
    """With --rollout-correction: the fraction of tokens whose train/sampler ratio hit the cap
    (the gap itself is old_logprob_abs_diff, the mean |log-prob - sampler's| of the first epoch)."""
    return {"rollout/frac_capped": totals["num_capped"] / max(1, num_tokens)} if config.rollout_correction else {}


def _backward(run: Run, inputs: list[tuple], p_yes: list[float] | None) -> tuple[dict, float, float]:
    """Gradients of the loss over every micro-batch, clipped: (sums of the loss parts, loss sum,
    grad norm), over every rank's samples under torchrun. Appends each sample's P("Yes") to
    `p_yes` unless it is None."""
    run.optimizer.zero_grad(set_to_none=True)
    totals, loss_sum = dict.fromkeys(LOSS_PARTS, 0.0), 0.0
    for read, r in inputs:
        with precision.autocast(run.device, run.config.dtype):
            hidden = _hidden(run, read, r)
            weight = heads.lm_head_weight(run.model)  # sharded: the root's gathered weight, after its forward
            out = rlv_loss(hidden, weight, r, run.loss_config)
        if p_yes is not None:  # before the backward, after which FSDP2 frees the gathered weight
            p_yes += heads.p_yes(hidden, weight, r.verifier_index, (run.sampler.yes_id, run.sampler.no_id))
        out.loss.backward()
        loss_sum += float(out.loss.detach())
        totals["policy_loss"] += float(out.policy_loss)
        totals["verifier_loss"] += float(out.verifier_loss)
        totals["kl"] += float(out.kl)
        totals["num_clipped"] += float(out.num_clipped)
        totals["logprob_gap"] += float((out.logprobs - r.old_logprobs).abs().sum())
        totals["num_capped"] += float(out.num_capped)
    if run.master is not None:
        run.master.take_grads()
    if not run.world.is_distributed:
        return totals, loss_sum, float(torch.nn.utils.clip_grad_norm_(run.step_params, run.config.max_grad_norm))
    sums = run.world.sum([loss_sum, *totals.values()], "summing the loss")
    grad_norm = distributed.clip_grad_norm(run.step_params, run.config.max_grad_norm)
    return dict(zip(LOSS_PARTS, sums[1:])), sums[0], grad_norm


def _hidden(run: Run, read: tuple | None, r) -> torch.Tensor:
    """The final-norm hidden states the loss reads: (N + B, H) from the packed forward (`read`;
    sharded, as calls of the FSDP2 units), else (B, T, H) from HF's trunk; sharded, from the
    model's own forward, whose FSDP2 hooks gather the weights and reduce-scatter the gradients
    (logits of the last position only)."""
    if read is not None:
        return train_forward.read_hidden(run.model, r.input_ids, *read,
                                         checkpoint=run.config.gradient_checkpointing)  # (N + B, H)
    if run.world.is_distributed:
        out = run.model(input_ids=r.input_ids, attention_mask=r.attention_mask, logits_to_keep=1,
                        output_hidden_states=True)
        return out.hidden_states[-1]  # (B, T, H), after the final norm
    return run.model.model(input_ids=r.input_ids, attention_mask=r.attention_mask).last_hidden_state  # (B, T, H)


# ----------------------------------------------------------------------------- saving
def _save_checkpoint(run: Run, step: int, trainer_state: dict, log) -> None:
    """A checkpoint, or one log line when it cannot be written: the run goes on (the weights are
    in memory) and the next checkpoint retries; OUT/latest still names the last complete one."""
    out = Path(run.config.out)
    try:
        if run.world.is_distributed:  # DCP: each rank writes its shards
            ckpt.save_sharded_checkpoint(out, step, (run.model, run.optimizer), trainer_state, run.config.keep_last,
                                         run.world)
            return
        saved = run.adapter if run.adapter is not None else run.model  # a PeftModel saves its adapter alone
        ckpt.save_checkpoint(out, step, saved, run.tokenizer, trainer_state, run.config.keep_last)
    except ckpt.CheckpointError as e:
        log(f"step {step}: checkpoint not written: {e}; training continues; the next checkpoint retries")


def _save_final(run: Run, metrics_path: Path) -> None:
    """OUT/final; sharded: the weights gathered on rank 0, saved through a plain model of the same
    architecture, LoRA adapters merged (a Hugging Face directory as in one process)."""
    out = Path(run.config.out)
    try:
        if run.world.is_distributed:
            ckpt.save_final_gathered(out, run.model, run.tokenizer, partial(setup.final_model, run.config, log=_quiet),
                                     run.world)
        else:
            ckpt.save_final(out, run.model, run.tokenizer)
    except ckpt.CheckpointError as e:
        last = ckpt.read_marker(out)
        raise TrainingError(f"the final model was not written ({e}); the last complete checkpoint is "
                            f"{last or 'none'}, the metrics are in {metrics_path}") from e


# ----------------------------------------------------------------------------- the command
def _main(argv: list[str] | None) -> int:
    config = parse_config(argv, saved_config=setup.saved_config)
    try:
        train(config)
    except (TrainingError, ckpt.CheckpointError, distributed.DistributedError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        distributed.abandon(1)  # a failed collective: exit now, the broken group left alone
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m rlvfast.train`: the exit status (0; 1 when the run stops; 2 for a bad option)."""
    return run_command(_main, PROG, argv)
