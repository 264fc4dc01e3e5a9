"""Supervised warm start of the tiny built-in model on imperfect synthetic solutions, cached.

RL needs a policy that already finishes its solutions in the right format and gets some of
them right, while still making real arithmetic mistakes when it samples. So the tiny model
is trained with plain next-token cross-entropy on `prompt + solution + <eos>` where the
solutions come from `synthetic.solution_text` with wrong steps injected at `error_rate`:
greedy decoding learns the arithmetic, sampling at temperature 1 keeps making the injected
kind of error (off by 1-3), which RL then has to remove. The loss covers the solution and
<eos> only, not the prompt. Each batch also holds `verify_rows` rows
`[prompt, solution, TINY_VERIFY_PROMPT, Yes/No]` (loss on the label only) so the model has
produced "Yes"/"No" before RL^V: without them RL^V starts at ~11 nats of verifier loss and
its gradient wrecks the policy. These rows teach the label format and base rate, not the
discrimination. An optional phase 2 (`verifier_steps` > 0, off by default) does: contrastive
pairs (one problem solved right and wrong in the same batch) with the label loss averaged on
its own (`loss_weights`). Measured (docs/experiments.md: S1.3, S2.4, S2.8): after a ~250-step
plateau, 400 phase-2 steps took the held-out AUC from 0.51 to 0.87 (balanced accuracy 0.81).

The default recipe's result ships in the package (`rlvfast.models.BASE_MODEL_DIR`, built by
`python -m rlvfast.pretrain`); `warm_start_path` returns it when a config equals its card's
(same cache key, hence same WARM_START_VERSION), so the default trains nothing. Any other
config is trained as follows. The result is an ordinary Hugging Face directory cached under
`~/.cache/rlvfast/warm_start/<hash of the config>/` (or `$RLVFAST_CACHE`), written into a
temporary directory and renamed, so a second run reuses it and a killed run leaves nothing
half-written. Not here: the RL loop (`rlvfast.train.loop`), evaluation (`rlvfast.eval`, and the
training run's table, `rlvfast.train.report`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rlvfast.models import (BASE_MODEL_DIR, TINY_VERIFY_PROMPT, TinyModelConfig, build_tiny_model, load_model,
                            read_card, save_model, yes_no_ids)
from rlvfast.sampler import format_prompt
from rlvfast.tasks.synthetic import Difficulty, make_problems, solution_text

# Bump when the data format or the training procedure changes, so old caches are not reused.
WARM_START_VERSION = 4  # 4: training never draws a held-out problem (synthetic.is_held_out)



@dataclass(slots=True)
class WarmStartConfig:
    """Supervised warm start of the tiny model. Defaults: 271 s on 2 quiet cores (docs/experiments.md, S3.4)."""
    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 20
    error_rate: float = 0.15      # the chance that a step of a solution is wrong
    # Number of operands of the warm-start chains and how often each appears: mostly the
    # training difficulty (3), some 2 and 4 so that `hard` (4) is not wholly unseen.
    operand_weights: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.6, 4: 0.2})
    # Rows per batch that also teach the verification format: [prompt, solution (wrong steps at
    # verify_error_rate, about half wrong), verify prompt, "Yes"/"No"], loss on the label only.
    # Without them the model has never produced "Yes"/"No" and RL^V starts at ~11 nats of
    # verifier loss whose gradient swamps the policy's (docs/design/trainer.md, "Warm start").
    verify_rows: int = 64
    verify_error_rate: float = 0.3
    # Optional second phase, a verifier warm start (0 = off): `verifier_steps` steps at
    # `verifier_lr` (warmup 20, cosine to 10%) on `verifier_solution_rows` solution rows plus
    # `verifier_pairs` contrastive pairs, the same problem solved right ("Yes") and with wrong
    # steps ("No"); loss = mean over solution tokens + mean over labels. What it measured: the
    # module docstring; unpaired verification rows did not learn the label (docs/experiments.md, S2.4).
    verifier_steps: int = 1000
    verifier_lr: float = 1e-3
    verifier_solution_rows: int = 32
    verifier_pairs: int = 64
    seed: int = 0
    model: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "verifier_pairs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WarmStartConfig.{name} must be a positive int, got {value!r}")
        for name in ("verifier_steps", "verifier_solution_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"WarmStartConfig.{name} must be an int >= 0, got {value!r}")
        for name in ("lr", "verifier_lr"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"WarmStartConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"WarmStartConfig.warmup must be an int >= 0, got {self.warmup!r}")
        for name in ("error_rate", "verify_error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WarmStartConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not isinstance(self.verify_rows, int) or self.verify_rows < 0:
            raise ValueError(f"WarmStartConfig.verify_rows must be an int >= 0, got {self.verify_rows!r}")
        if isinstance(self.model, dict):
            self.model = TinyModelConfig(**self.model)
        self.operand_weights = {int(k): float(v) for k, v in self.operand_weights.items()}
        if not self.operand_weights or any(k < 2 or v < 0 for k, v in self.operand_weights.items()) \
                or sum(self.operand_weights.values()) <= 0:
            raise ValueError("WarmStartConfig.operand_weights must map operand counts >= 2 to "
                             f"non-negative weights with a positive sum, got {self.operand_weights!r}")

    def cache_key(self) -> str:
        fields = asdict(self)
        if not self.verifier_steps:  # phase 2 off: the same key as before phase 2 existed
            for name in ("verifier_steps", "verifier_lr", "verifier_solution_rows", "verifier_pairs"):
                del fields[name]
        blob = json.dumps({"version": WARM_START_VERSION, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("RLVFAST_CACHE", Path.home() / ".cache" / "rlvfast")) / "warm_start"


def _problem(rng: random.Random, config: WarmStartConfig, seed: int):
    counts = list(config.operand_weights)
    num_operands = rng.choices(counts, [config.operand_weights[k] for k in counts])[0]
    return make_problems(1, Difficulty(num_operands, 1), seed=seed)[0]


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _solution_row(tokenizer, problem, solution: str) -> tuple[list[int], int]:
    """[prompt, solution, EOS] with the loss from the first solution token on."""
    prompt_ids = _encode(tokenizer, format_prompt(tokenizer, problem.problem))
    return prompt_ids + _encode(tokenizer, solution) + [tokenizer.eos_token_id], len(prompt_ids)


def _verify_row(tokenizer, problem, solution: str) -> tuple[list[int], int]:
    """[prompt, solution, verify prompt, Yes/No] with the loss on the label only."""
    yes_id, no_id = yes_no_ids(tokenizer)
    label = yes_id if solution.endswith(f"\\boxed{{{problem.answer}}}") else no_id
    ids = (_encode(tokenizer, format_prompt(tokenizer, problem.problem)) + _encode(tokenizer, solution)
           + _encode(tokenizer, TINY_VERIFY_PROMPT) + [label])
    return ids, len(ids) - 1


def _pad(tokenizer, rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
    for r, (ids, first_loss) in enumerate(rows):
        input_ids[r, :len(ids)] = torch.tensor(ids)
        labels[r, first_loss:len(ids)] = torch.tensor(ids[first_loss:])
    return input_ids, labels


# problem_seed offsets of the two phases' batches: step k of phase 1 draws from PHASE_ONE_SEED + k
PHASE_ONE_SEED, PHASE_TWO_SEED = 10_000_000, 20_000_000


def batch_texts(rng: random.Random, config: WarmStartConfig, problem_seed: int) -> list[tuple]:
    """One phase-1 batch as text, in the order of its random draws: `(problem, solution,
    is_verify_row)` for batch_size solution rows (wrong steps at error_rate), then verify_rows
    verification rows (at verify_error_rate)."""
    rows = []
    for i in range(config.batch_size + config.verify_rows):
        problem = _problem(rng, config, problem_seed * config.batch_size + i)
        is_verify_row = i >= config.batch_size
        error_rate = config.verify_error_rate if is_verify_row else config.error_rate
        rows.append((problem, solution_text(problem, error_rate, rng), is_verify_row))
    return rows


def verifier_batch_texts(rng: random.Random, config: WarmStartConfig, problem_seed: int) -> list[tuple]:
    """One phase-2 batch as text, in the order of its random draws: `(problem, solutions,
    is_pair)`: verifier_solution_rows solution rows (one solution), then verifier_pairs
    contrastive pairs (the correct solution, then one with wrong steps)."""
    rows = []
    for i in range(config.verifier_solution_rows + config.verifier_pairs):
        problem = _problem(rng, config, problem_seed * 1000 + i)
        if i < config.verifier_solution_rows:
            rows.append((problem, [solution_text(problem, config.error_rate, rng)], False))
            continue
        right = solution_text(problem, 0.0, rng)
        wrong = right
        while wrong == right:  # a wrong step always changes the final answer (synthetic.py)
            wrong = solution_text(problem, max(config.verify_error_rate, 0.5), rng)
        rows.append((problem, [right, wrong], True))
    return rows


def make_batch(tokenizer, rng: random.Random, config: WarmStartConfig, problem_seed: int):
    """(input_ids, labels) for one phase-1 batch (`batch_texts`); labels are -100 where there is
    no loss and on padding: solution rows carry the loss on solution + EOS, verification rows
    on the Yes/No label only."""
    return _pad(tokenizer, [_verify_row(tokenizer, problem, solution) if is_verify_row
                            else _solution_row(tokenizer, problem, solution)
                            for problem, solution, is_verify_row in batch_texts(rng, config, problem_seed)])


def make_verifier_batch(tokenizer, rng: random.Random, config: WarmStartConfig, problem_seed: int):
    """(input_ids, labels) of one phase-2 batch (`verifier_batch_texts`): the solution rows, then
    each contrastive pair as two verification rows (2i, 2i + 1 after the solution rows)."""
    rows = []
    for problem, solutions, is_pair in verifier_batch_texts(rng, config, problem_seed):
        if is_pair:
            rows += [_verify_row(tokenizer, problem, solution) for solution in solutions]
        else:
            rows.append(_solution_row(tokenizer, problem, solutions[0]))
    return _pad(tokenizer, rows)


def seen_problems(config: WarmStartConfig) -> set[str]:
    """The problem texts `train_warm_start(config)` trains on (both phases): its batches' texts
    drawn again from its seed in its order. For the model card's overlap count with held-out
    problems; trains nothing."""
    rng = random.Random(config.seed)
    batches = [batch_texts(rng, config, PHASE_ONE_SEED + step) for step in range(config.steps)]
    batches += [verifier_batch_texts(rng, config, PHASE_TWO_SEED + step) for step in range(config.verifier_steps)]
    return {row[0].problem for batch in batches for row in batch}


def _cosine_schedule(optimizer, warmup: int, steps: int):
    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def loss_weights(labels: torch.Tensor, is_label_row: torch.Tensor | None = None) -> torch.Tensor:
    """Per-target weights of the next-token loss, labels (B, T) with -100 = no loss -> (B, T-1).
    Without `is_label_row`: the mean over every target token (phase 1). With it (B,) bool: the
    mean over the solution rows' tokens + the mean over the verification rows' labels, so the
    one label per row is not ~2% of a pooled mean (phase 2)."""
    has_loss = (labels[:, 1:] != -100).float()  # (B, T-1)
    if is_label_row is None:
        return has_loss / has_loss.sum().clamp(min=1)
    label_rows = is_label_row[:, None].float()  # (B, 1)
    solution, label = has_loss * (1 - label_rows), has_loss * label_rows
    return solution / solution.sum().clamp(min=1) + label / label.sum().clamp(min=1)


def backward_in_buckets(model, input_ids: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                        pad_id: int, bucket_rows: int = 64) -> float:
    """loss = sum(weights * next-token cross-entropy) over a right-padded batch, backward
    included; returns the loss. Rows are sorted by length and run `bucket_rows` at a time, each
    bucket cut to its own longest row: with 2-4 operand problems a padded batch is ~37% pad,
    and a right-padded row's real tokens do not see the padding, so this is the same loss and
    gradient as one padded forward (tested) in ~3/4 of the time (docs/experiments.md, S3.1)."""
    lengths = (input_ids != pad_id).sum(1)  # (B,)
    order = torch.argsort(lengths, descending=True, stable=True)
    total = 0.0
    for start in range(0, len(order), bucket_rows):
        rows = order[start:start + bucket_rows]
        width = int(lengths[rows[0]])
        ids = input_ids[rows, :width]  # (b, w)
        logits = model(input_ids=ids, attention_mask=(ids != pad_id).long()).logits  # (b, w, V)
        targets = labels[rows, 1:width].clamp(min=0)  # (b, w-1)
        per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, reduction="none")  # (b, w-1)
        loss = (per_token * weights[rows, :width - 1]).sum()
        loss.backward()
        total += loss.item()
    return total


def _run_phase(model, name: str, steps: int, lr: float, warmup: int, batch_fn, pad_id: int, log) -> None:
    """batch_fn(step) -> (input_ids, labels, weights); AdamW, cosine schedule, clip 1.0."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    scheduler = _cosine_schedule(optimizer, warmup, steps)
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=name, unit="step", disable=None if log else True, file=sys.stderr)  # a terminal only
    for step in bar:
        input_ids, labels, weights = batch_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss = backward_in_buckets(model, input_ids, labels, weights, pad_id)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if log and (step % 50 == 0 or step == steps - 1):
            bar.clear()
            log(f"{name} step {step + 1}/{steps} loss {loss:.4f} ({time.perf_counter() - start:.0f} s)")


def train_warm_start(out_dir: str | os.PathLike, config: WarmStartConfig, log=print) -> Path:
    """Builds the tiny model in `out_dir` and trains it in place; returns `out_dir`.
    Phase 1: solutions with wrong steps + verification rows (pooled mean loss); phase 2 (when
    config.verifier_steps > 0): the verifier warm start on contrastive pairs (label loss
    averaged on its own, `loss_weights`)."""
    out = build_tiny_model(out_dir, config.model)
    model, tokenizer = load_model(out)
    model.train()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    start = time.perf_counter()

    def phase_one_batch(step):
        input_ids, labels = make_batch(tokenizer, rng, config, problem_seed=PHASE_ONE_SEED + step)
        return input_ids, labels, loss_weights(labels)

    def phase_two_batch(step):
        input_ids, labels = make_verifier_batch(tokenizer, rng, config, problem_seed=PHASE_TWO_SEED + step)
        is_label_row = torch.arange(len(labels)) >= config.verifier_solution_rows  # (B,)
        return input_ids, labels, loss_weights(labels, is_label_row)

    _run_phase(model, "warm start", config.steps, config.lr, config.warmup, phase_one_batch,
               tokenizer.pad_token_id, log)
    if config.verifier_steps:
        _run_phase(model, "verifier warm start", config.verifier_steps, config.verifier_lr, 20, phase_two_batch,
                   tokenizer.pad_token_id, log)
    model.eval()
    save_model(model, tokenizer, out)
    (out / "warm_start.json").write_text(json.dumps(
        {"config": asdict(config), "version": WARM_START_VERSION,
         "seconds": time.perf_counter() - start}, indent=1, default=str))
    return out


def cached_warm_start(config: WarmStartConfig | None = None, cache_dir: str | os.PathLike | None = None,
                      log=print) -> Path:
    """The warm-started model directory for `config`, trained once and then reused."""
    config = config or WarmStartConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / config.cache_key()
    if (final / "warm_start.json").is_file():
        if log:
            log(f"warm start: reusing cached model {final}")
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        if log:
            log(f"warm start: training the tiny model ({config.steps} steps), cached at {final}")
        train_warm_start(tmp, config, log=log)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same warm start first: use theirs
            if not (final / "warm_start.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def shipped_base(config: WarmStartConfig, base_dir: str | os.PathLike = BASE_MODEL_DIR) -> Path | None:
    """`base_dir` when its card records this very recipe (the same cache key: the config and
    WARM_START_VERSION) and its weights are there, else None."""
    base_dir = Path(base_dir)
    card = read_card(base_dir)
    if card is None or not (base_dir / "model.safetensors").is_file():
        return None
    training = card.get("training", {})
    if training.get("cache_key") != config.cache_key() or training.get("warm_start_version") != WARM_START_VERSION:
        return None
    return base_dir


def warm_start_path(config: WarmStartConfig, log=print, base_dir: str | os.PathLike = BASE_MODEL_DIR) -> Path:
    """The tiny model's starting point for `config`: the shipped base model when its card's recipe
    equals `config` (loads in a second), else `cached_warm_start(config)` (trained once, cached)."""
    shipped = shipped_base(config, base_dir)
    if log:
        log(f"warm start: the shipped base model {shipped} (its card's recipe equals these options)" if shipped
            else f"warm start: these options differ from the shipped base model's ({base_dir}); "
                 f"training it or reusing the cache")
    return shipped or cached_warm_start(config, log=log)
