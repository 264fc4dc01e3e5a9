"""`python -m rlvfast.train`: RL^V, one model trained as reasoner and verifier on its own rollouts.

    J = J_RL + lambda * J_verify            (arXiv 2505.04842)

Each step, top to bottom: take `prompts_per_step` problems; sample `group_size` solutions each
with the Sampler; grade them (1/0, time-limited grader, or a custom reward); group-relative
advantages; then per micro-batch ONE forward pass per sample over `[prompt, solution, verify
prompt]` (`rlvfast.train.forward`: each group's prompt once, the last layer only where the
loss reads) gives the policy rows (clipped loss with the sampler's old log-probs) and the
verifier row (-log P(label), label Yes/No from the reward); backward; clip; AdamW step. The
first forward's verifier rows also give P("Yes") BEFORE the update, logged as the verifier's
accuracy on fresh samples (lambda = 0: the sampler scores them instead). The math is in
`rlvfast.train.loss`, checkpoints in `rlvfast.train.checkpoint`, options in `rlvfast.train.config`
(`--help`).

With no arguments: the tiny built-in model, warm-started on imperfect synthetic solutions
(cached), trained with RL^V, then a table on held-out `test` and `hard` problems: pass@1 of
the warm start and the final model, the verifier's balanced accuracy, and majority,
best-of-N and weighted voting at N = 1..16 (OUT/summary.json).

The run directory: one run at a time (`rlvfast.train.run_dir`: a lock on OUT/.lock); a fresh run
needs an empty OUT unless `--overwrite`; `--resume` refuses options that differ from the
checkpoint's where they change the run (`train_config.resume_differences`). `metrics.jsonl`
is strict JSON: a NaN or inf value is written as null (`skipped` and `num_bad_steps` say why).
A user's error (an option, a file, a reward function's output) is a `UserError`: one line,
exit 2 (`rlvfast.cli`); a run that cannot go on is a `TrainingError`: one line, exit 1.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import random
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rlvfast.train import checkpoint as ckpt
from rlvfast.train import forward as train_forward
from rlvfast.train import run_dir
from rlvfast.cli import UserError, run_command
from rlvfast.tasks.problems import DataError, Problem
from rlvfast.train.loss import (LossConfig, RowBatch, Sample, build_rows, compute_advantages, rlv_loss,
                             sequence_token_weights, verifier_label_weights, verifier_labels)
from rlvfast.train.report import _fmt, eval_problems, evaluate, format_table
from rlvfast.train.config import TrainConfig, parse_config, resume_differences

PROG = "rlvfast.train"


class TrainingError(RuntimeError):
    """The run cannot go on (NaN streak, the final model not written); printed as one line, exit 1."""


# ----------------------------------------------------------------------------- setup helpers
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    return torch.device(name)


def load_training_problems(config: TrainConfig) -> list[Problem]:
    """The training set; a bad --data fails here, before any model is loaded."""
    if config.is_synthetic:
        from rlvfast.tasks.synthetic import make_problems
        return make_problems(20_000, "train", seed=config.seed)
    from rlvfast.tasks.problems import load_problems
    try:
        problems = load_problems(config.data)
    except (DataError, FileNotFoundError, ImportError) as e:  # ImportError: .parquet without pyarrow
        raise UserError(f"--data: {e}") from e  # its message names the file (and line)
    if not problems:
        raise UserError(f"--data {config.data}: no problems in it")
    return list(problems)


def load_reward_fn(spec: str):
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--reward {spec!r}: cannot import {fn_name!r} from module {module_name!r} ({e})") from e
    if not callable(fn):
        raise UserError(f"--reward {spec!r} is not callable")
    return fn


def problems_for_step(problems: list[Problem], step: int, num: int, seed: int) -> list[Problem]:
    """Epoch-wise shuffled stream: position step*num onwards; the order depends only on the seed."""
    out = []
    for position in range(step * num, (step + 1) * num):
        epoch, index = divmod(position, len(problems))
        order = random.Random(f"{seed}:{epoch}").sample(range(len(problems)), len(problems))
        out.append(problems[order[index]])
    return out


def lm_head_weight(model) -> torch.Tensor:
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise UserError("the trainer computes log-probs from hidden states and the lm head weight; "
                        "an lm head with a bias is not supported")
    return head.weight  # (V, H)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**31 - 1)


# ----------------------------------------------------------------------------- rewards
def score_rollouts(outputs, problems: list[Problem], prompts: list[str], grader, reward_fn):
    """(rewards list[float | None], num_timeouts, num_errors) for every completion in order."""
    completions = [c for o in outputs for c in o.completions]
    per_sample = [p for p, o in zip(problems, outputs) for _ in o.completions]
    if reward_fn is None:
        results = grader.grade_batch([c.text for c in completions], [p.answer for p in per_sample])
        return ([1.0 if r.correct else 0.0 for r in results], sum(r.status == "timeout" for r in results),
                sum(r.status == "error" for r in results))
    columns = {"answer": [p.answer for p in per_sample], "problem": [p.problem for p in per_sample],
               "id": [p.id for p in per_sample]}
    rewards = reward_fn(prompts=[pr for pr, o in zip(prompts, outputs) for _ in o.completions],
                        completions=[c.text for c in completions],
                        completion_ids=[list(c.token_ids) for c in completions], **columns)
    name = getattr(reward_fn, "__qualname__", repr(reward_fn))
    if len(rewards) != len(completions):
        raise UserError(f"--reward {name} returned {len(rewards)} rewards for {len(completions)} completions")
    out = []
    for i, r in enumerate(rewards):
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r)):
            raise UserError(f"--reward {name} returned {r!r} for completion {i}; expected a finite float or None")
        out.append(None if r is None else float(r))
    if all(r is None for r in out):  # the same text each time: Python shows it once
        warnings.warn(f"--reward {name} returned None for every completion of a step: that step trains "
                      f"nothing (no policy gradient, no verifier label)", stacklevel=2)
    return out, 0, 0


def verifier_accuracy(scores: list[float], rewards: list[float | None]) -> tuple[float | None, float | None]:
    """(accuracy, balanced accuracy) of P(Yes) >= 0.5 against reward labels, before the update."""
    pairs = [(s >= 0.5, r >= 0.5) for s, r in zip(scores, rewards) if r is not None and s is not None]
    if not pairs:
        return None, None
    accuracy = sum(p == y for p, y in pairs) / len(pairs)
    pos = [p for p, y in pairs if y]
    neg = [not p for p, y in pairs if not y]
    if not pos or not neg:
        return accuracy, None
    return accuracy, (sum(pos) / len(pos) + sum(neg) / len(neg)) / 2


# ----------------------------------------------------------------------------- one update
def _read_rows(rows: RowBatch, prefix_lengths: list[int]) -> tuple[tuple, RowBatch]:
    """(read_hidden's arguments, the rows re-indexed into its compact output): the loss reads
    the policy positions then the verifier positions; each row's prompt but its last token is
    the shareable prefix (the last prompt position predicts the first sampled token)."""
    num_policy, num_rows = rows.policy_index.numel(), rows.verifier_index.numel()
    read = torch.cat([rows.policy_index, rows.verifier_index])  # (N + B,)
    lengths = rows.attention_mask.sum(dim=1).tolist()
    compact = replace(rows, policy_index=torch.arange(num_policy, device=read.device),
                      verifier_index=torch.arange(num_policy, num_policy + num_rows, device=read.device))
    return (lengths, prefix_lengths, read), compact


def update(model, optimizer, samples: list[Sample], config: TrainConfig, loss_config: LossConfig,
           verify_ids, eos, pad_id, device, ref_model=None, fast_forward: bool = True,
           score_ids: tuple[int, int] | None = None) -> dict:
    """ppo_epochs optimizer steps over the rollouts; returns the metrics (or skipped=True).
    fast_forward: the trunk forward of `rlvfast.train.forward` where the model allows it (the
    same gradients up to float rounding; False: HF's padded forward, the reference).
    score_ids: (yes_id, no_id) to also return "p_yes", P("Yes") of every sample before the
    update, read off the first forward's verifier rows (the sampler's score, for free)."""
    weight = lm_head_weight(model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with_verifier = config.verifier_coef > 0
    chunks = [samples[i:i + config.micro_batch] for i in range(0, len(samples), config.micro_batch)]
    rows = [build_rows(c, verify_ids, eos, pad_id, with_verifier).to(device) for c in chunks]
    if ref_model is not None:
        with torch.no_grad(), autocast:
            from rlvfast import ops
            for r in rows:
                ref_hidden = ref_model.model(input_ids=r.input_ids, attention_mask=r.attention_mask).last_hidden_state
                flat = ref_hidden.reshape(-1, ref_hidden.shape[-1]).index_select(0, r.policy_index)  # (N, H)
                r.ref_logprobs, _ = ops.token_logprobs(flat, lm_head_weight(ref_model), r.policy_targets,
                                                       config.temperature)
    if fast_forward and train_forward.supports(model):  # shared prompts, only the read rows: see train_forward
        inputs = [_read_rows(r, [max(0, len(s.prompt_ids) - 1) for s in c]) for r, c in zip(rows, chunks)]
    else:
        inputs = [(None, r) for r in rows]
    totals = dict.fromkeys(("policy_loss", "verifier_loss", "kl", "num_clipped", "logprob_gap"), 0.0)
    num_tokens = sum(int(r.policy_targets.numel()) for r in rows)
    grad_norm = float("nan")
    p_yes = []
    for epoch in range(config.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k in totals:
            totals[k] = 0.0
        for read, r in inputs:
            with autocast:
                if read is None:
                    hidden = model.model(input_ids=r.input_ids, attention_mask=r.attention_mask).last_hidden_state  # (B, T, H)
                else:
                    hidden = train_forward.read_hidden(model, r.input_ids, *read)  # (N + B, H)
                out = rlv_loss(hidden, weight, r, loss_config)
            out.loss.backward()
            if epoch == 0 and score_ids is not None and with_verifier:
                p_yes += _p_yes(hidden, weight, r.verifier_index, score_ids)
            loss_sum += float(out.loss.detach())
            totals["policy_loss"] += float(out.policy_loss)
            totals["verifier_loss"] += float(out.verifier_loss)
            totals["kl"] += float(out.kl)
            totals["num_clipped"] += float(out.num_clipped)
            totals["logprob_gap"] += float((out.logprobs - r.old_logprobs).abs().sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm))
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            return {"skipped": True, "loss": loss_sum, "grad_norm": grad_norm, "p_yes": p_yes}
        optimizer.step()
    return {"skipped": False, "loss": totals["policy_loss"] + config.kl_coef * totals["kl"]
            + config.verifier_coef * totals["verifier_loss"],
            "loss/policy": totals["policy_loss"], "loss/verifier": totals["verifier_loss"], "kl": totals["kl"],
            "clip_ratio": totals["num_clipped"] / max(1, num_tokens), "grad_norm": grad_norm,
            "old_logprob_abs_diff": totals["logprob_gap"] / max(1, num_tokens), "num_train_tokens": num_tokens,
            "p_yes": p_yes}


def _p_yes(hidden: torch.Tensor, weight: torch.Tensor, verifier_index: torch.Tensor,
           score_ids: tuple[int, int]) -> list[float]:
    """P("Yes") at the verifier rows of one forward (the Sampler's score: full-vocabulary softmax)."""
    from rlvfast.sampler import p_yes
    with torch.no_grad():
        rows = hidden.detach().reshape(-1, hidden.shape[-1]).index_select(0, verifier_index).to(weight.dtype)  # (B, H)
        return p_yes(rows, weight.detach(), *score_ids).tolist()


# ----------------------------------------------------------------------------- one step
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


def rl_step(run: Run, batch: list[Problem], step: int) -> tuple[dict, dict]:
    """Sample, grade, advantages, update: one RL^V step. Returns (metrics, update result)."""
    from rlvfast import SamplingParams
    from rlvfast.sampler import format_prompt

    config, sampler = run.config, run.sampler
    t0 = time.perf_counter()
    prompts = [format_prompt(run.tokenizer, p.problem) for p in batch]
    run.model.eval()
    params = SamplingParams(n=config.group_size, max_tokens=config.max_new_tokens,
                            temperature=config.temperature, seed=step_seed(config.seed, step))
    # P("Yes") of every sample before the update: with the verifier in the update (lambda > 0) its
    # first forward gives it (same rows, same weights); the base method asks the sampler for it
    in_update = config.verifier_coef > 0
    outputs = sampler.generate(prompts, params, score=not in_update)
    completions = [c for o in outputs for c in o.completions]
    t1 = time.perf_counter()
    rewards, num_timeouts, num_errors = score_rollouts(outputs, batch, prompts, run.grader, run.reward_fn)
    t2 = time.perf_counter()

    advantages, is_valid = compute_advantages(rewards, config.group_size, config.algo)  # (B,), (B,)
    lengths = torch.tensor([len(c.token_ids) for c in completions])  # (B,)
    token_weights = sequence_token_weights(lengths, is_valid, config.loss_agg, config.max_new_tokens)  # (B,)
    label_weights = verifier_label_weights(is_valid)  # (B,)
    labels = verifier_labels(rewards, sampler.yes_id, sampler.no_id)
    samples = [Sample(list(o.prompt_token_ids), list(c.token_ids), c.logprobs, float(advantages[i]),
                      float(token_weights[i]), labels[i], float(label_weights[i]))
               for i, (o, c) in enumerate((o, c) for o in outputs for c in o.completions)]
    run.model.train()
    pad_id = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else sampler.eos_ids[0]
    result = update(run.model, run.optimizer, samples, config, run.loss_config, sampler.verify_ids,
                    sampler.eos_ids, pad_id, run.device, run.ref_model,
                    score_ids=(sampler.yes_id, sampler.no_id) if in_update else None)
    p_yes = result.pop("p_yes")
    t3 = time.perf_counter()

    metrics = {"step": step + 1, **_rollout_metrics(rewards, completions, config), **result}
    metrics["verifier/accuracy"], metrics["verifier/balanced_accuracy"] = verifier_accuracy(
        p_yes if in_update else [c.score for c in completions], rewards)
    metrics |= {"grader/timeouts": num_timeouts, "grader/errors": num_errors, "time/sampling": t1 - t0,
                "time/grading": t2 - t1, "time/update": t3 - t2,
                "tokens_per_second": int(lengths.sum()) / (t3 - t0)}
    return metrics, result


# ----------------------------------------------------------------------------- the run
def train(config: TrainConfig, log=print) -> dict:
    """The whole run; returns the summary (also written to OUT/summary.json). Holds OUT's lock
    throughout; a fresh run needs an empty OUT (or --overwrite), see `rlvfast.train.run_dir`."""
    device = pick_device(config.device)
    problems = load_training_problems(config)  # a bad --data fails here, before anything slow
    reward_fn = load_reward_fn(config.reward) if config.reward else None
    if config.resume:
        _latest_checkpoint(config.out)  # nothing to resume: an error before OUT is created
    with run_dir.hold_lock(config.out):
        run_dir.prepare(config.out, config.resume, config.overwrite)
        return _train(config, problems, reward_fn, device, log)


def _latest_checkpoint(out: str) -> Path:
    try:
        return ckpt.latest_checkpoint(out)
    except ckpt.CheckpointError as e:
        raise UserError(str(e)) from e


def _resume_state(config: TrainConfig) -> tuple[Path, dict]:
    """(checkpoint, trainer state) to resume from; a UserError when an option that changes the
    run differs from the checkpoint's (the weights and optimizer come from the checkpoint, so a
    new --lr or --model would be ignored yet recorded), or when --steps is below its step."""
    path = _latest_checkpoint(config.out)
    state = ckpt.load_trainer_state(path)
    if differences := resume_differences(state.get("config", {}), config):
        raise UserError(f"--resume from {path}: {len(differences)} option(s) differ from the checkpoint's and "
                        f"would change the run: {'; '.join(differences)}. Pass the checkpoint's values, or "
                        f"start a new run with another --out")
    if config.steps < state["step"]:
        raise UserError(f"--resume from {path}: --steps {config.steps} is below the checkpoint's step "
                        f"{state['step']}; pass --steps {state['step']} or more")
    return path, state


def _train(config: TrainConfig, problems: list[Problem], reward_fn, device: torch.device, log) -> dict:
    from rlvfast.tasks.grading import Grader

    with Grader(timeout=config.grader_timeout) as grader:  # the worker pool ends with the run, however it ends
        return _train_with(config, problems, reward_fn, device, log, grader)


def _train_with(config: TrainConfig, problems: list[Problem], reward_fn, device: torch.device, log, grader) -> dict:
    from rlvfast import Sampler
    from rlvfast.models import load_model

    wall_start = time.perf_counter()
    out = Path(config.out)
    resume_from, state = _resume_state(config) if config.resume else (None, None)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)

    # ---- model: the cached warm start of the tiny model, or the user's model
    if config.is_tiny:
        from rlvfast.train.warm_start import cached_warm_start
        init_path = str(cached_warm_start(config.warm_start_config(), log=log))
    else:
        init_path = config.model
    model, tokenizer = load_model(resume_from or init_path, device=device)
    ref_model = None
    if config.kl_coef > 0:  # KL to the initial model, frozen
        ref_model, _ = load_model(init_path, device=device)
        ref_model.requires_grad_(False)
    sampler = Sampler(model, tokenizer, verify_prompt=config.resolved_verify_prompt())
    loss_config = LossConfig(clip_low=config.clip_low, clip_high=config.clip_high, temperature=config.temperature,
                             verifier_coef=config.verifier_coef, kl_coef=config.kl_coef)
    # fused: one kernel over all parameters (CPU: ~6 ms per step instead of 21-33 ms)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.99), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup) if config.warmup else 1.0)
    splits = eval_problems(config) if config.is_synthetic and config.eval_problems else {}

    # ---- resume, or evaluate the starting point for the final table
    start_step, num_bad, warm_eval = 0, 0, {}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        start_step, num_bad, warm_eval = state["step"], state["num_bad_steps"], state.get("warm_start_eval", {})
        log(f"resuming from {resume_from} at step {start_step}")
    elif splits:
        t0 = time.perf_counter()
        # only pass@1 of the starting point is reported: a few samples per problem suffice
        warm_eval = {s: evaluate(sampler, p, config, grader, seed=1, num_samples=min(4, config.eval_samples))
                     for s, p in splits.items()}
        log(f"warm start evaluated in {time.perf_counter() - t0:.0f} s: " +
            ", ".join(f"{s} pass@1 {r['pass@1']:.3f}" for s, r in warm_eval.items()))
    metrics_path = out / "metrics.jsonl"
    _truncate_metrics(metrics_path, start_step)

    def state_dict(step: int) -> dict:
        return {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": ckpt.rng_state(), "num_bad_steps": num_bad, "warm_start_eval": warm_eval,
                "config": config.to_dict()}

    # ---- RL^V
    run = Run(config, model, tokenizer, sampler, optimizer, grader, reward_fn, loss_config, ref_model, device)
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc="RL^V",
               disable=None, file=sys.stderr)
    with open(metrics_path, "a") as metrics_file:
        for step in bar:
            batch = problems_for_step(problems, step, config.prompts_per_step, config.seed)
            metrics, result = rl_step(run, batch, step)
            metrics["lr"] = scheduler.get_last_lr()[0]
            if result["skipped"]:
                num_bad += 1
                log(f"step {step + 1}: non-finite loss {result['loss']} or grad norm {result['grad_norm']}: "
                    f"skipped ({num_bad} in a row)")
            else:
                num_bad = 0
                scheduler.step()
            metrics["num_bad_steps"] = num_bad
            metrics_file.write(json_line(metrics) + "\n")
            metrics_file.flush()
            bar.set_postfix(reward=_fmt(metrics["reward"]),
                            vacc=_fmt(metrics["verifier/balanced_accuracy"]), refresh=False)
            if bar.disable and config.log_every and ((step + 1) % config.log_every == 0 or step + 1 == config.steps):
                log(step_line(metrics, config.steps))  # no terminal, no bar: a line in the log instead
            if num_bad >= config.max_bad_steps:
                last = ckpt.read_marker(out)
                raise TrainingError(f"{num_bad} consecutive steps with a non-finite loss or gradient "
                                    f"(last at step {step + 1}); stopping. The last good checkpoint "
                                    f"({last or 'none written yet'}) is intact; try a lower --lr.")
            # not during a streak of skipped steps: the checkpoint the error names stays the last good one
            if num_bad == 0 and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                _save_checkpoint(run, step + 1, state_dict(step + 1), log)
    bar.close()
    _save_final(out, model, tokenizer, metrics_path)

    # ---- the final table
    summary: dict = {"config": config.to_dict(), "steps": config.steps}
    if splits:
        model.eval()
        summary["warm_start"] = warm_eval
        summary["eval"] = {s: evaluate(sampler, p, config, grader, seed=1) for s, p in splits.items()}
    summary["wall_seconds"] = time.perf_counter() - wall_start
    (out / "summary.json").write_text(json.dumps(finite_or_none(summary), indent=1, allow_nan=False))
    if splits:
        log(format_table(summary))
    log(f"done in {summary['wall_seconds']:.0f} s; model at {out / 'final'}, metrics in {metrics_path}")
    return summary


def _save_checkpoint(run: Run, step: int, trainer_state: dict, log) -> None:
    """A checkpoint, or one log line when it cannot be written: the run goes on (the weights are
    in memory) and the next checkpoint retries; OUT/latest still names the last complete one."""
    out = Path(run.config.out)
    try:
        with _no_transformers_bars():
            ckpt.save_checkpoint(out, step, run.model, run.tokenizer, trainer_state, run.config.keep_last)
    except ckpt.CheckpointError as e:
        log(f"step {step}: checkpoint not written: {e}; training continues; the next checkpoint retries")


def _save_final(out: Path, model, tokenizer, metrics_path: Path) -> None:
    try:
        with _no_transformers_bars():
            ckpt.save_final(out, model, tokenizer)
    except ckpt.CheckpointError as e:
        last = ckpt.read_marker(out)
        raise TrainingError(f"the final model was not written ({e}); the last complete checkpoint is "
                            f"{last or 'none'}, the metrics are in {metrics_path}") from e


@contextmanager
def _no_transformers_bars():
    """No "Writing model shards" bar per checkpoint (one bar line each in a log file)."""
    from transformers.utils import logging as hf_logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def step_line(metrics: dict, num_steps: int) -> str:
    """One step in the log: `step 10/300  reward 0.531  loss/policy ...  1.23 s`."""
    seconds = sum(metrics.get(k, 0.0) for k in ("time/sampling", "time/grading", "time/update"))
    parts = [f"step {metrics['step']}/{num_steps}", f"reward {_fmt(metrics['reward'])}"]
    parts += [f"{k} {_fmt(metrics.get(k))}" for k in ("loss/policy", "loss/verifier")]
    parts.append(f"verifier accuracy {_fmt(metrics['verifier/accuracy'])} "
                 f"(balanced {_fmt(metrics['verifier/balanced_accuracy'])})")
    if metrics.get("skipped"):
        parts.append(f"skipped ({metrics['num_bad_steps']} in a row)")
    return "  ".join(parts + [f"{seconds:.2f} s"])


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


def _rollout_metrics(rewards: list[float | None], completions, config: TrainConfig) -> dict:
    valid = torch.tensor([math.nan if r is None else r for r in rewards]).view(-1, config.group_size)  # (P, G)
    group_std = torch.tensor([g[~g.isnan()].std().item() if (~g.isnan()).sum() > 1 else 0.0 for g in valid])
    lengths = [len(c.token_ids) for c in completions]
    return {"reward": float(valid.nanmean()) if (~valid.isnan()).any() else None,
            "reward_std": float(group_std.mean()), "frac_reward_zero_std": float((group_std == 0).float().mean()),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/clipped_ratio": sum(c.finish_reason == "length" for c in completions) / len(completions),
            # the sampled-token estimate of the policy entropy (TRL computes it exactly from full logits)
            "entropy": -float(torch.cat([c.logprobs for c in completions]).mean()),
            "rewards/none": sum(r is None for r in rewards)}


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines the interrupted run wrote after its last checkpoint."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def saved_config(out: str) -> dict:
    """The options OUT's latest checkpoint was trained with; {} without one (`train` says why).
    mmap: the optimizer state in the same file is not read."""
    try:
        path = ckpt.latest_checkpoint(out)
    except ckpt.CheckpointError:
        return {}
    state = torch.load(path / ckpt.STATE_FILE, map_location="cpu", weights_only=False, mmap=True)
    return dict(state.get("config", {}))


def _main(argv: list[str] | None) -> int:
    config = parse_config(argv, saved_config=saved_config)
    try:
        train(config)
    except (TrainingError, ckpt.CheckpointError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m rlvfast.train`: the exit status (0; 1 when the run stops; 2 for a bad option)."""
    return run_command(_main, PROG, argv)
