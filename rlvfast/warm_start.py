"""Supervised warm start of the tiny built-in model on imperfect synthetic solutions, cached.

RL needs a policy that already finishes its solutions in the right format and gets some of
them right, while still making real arithmetic mistakes when it samples. So the tiny model
is trained with plain next-token cross-entropy on `prompt + solution + <eos>` where the
solutions come from `synthetic.solution_text` with wrong steps injected at `error_rate`:
greedy decoding learns the arithmetic, sampling at temperature 1 keeps making the injected
kind of error (off by 1-3), which RL then has to remove. The loss covers the solution and
<eos> only, not the prompt. Each batch also holds `verify_rows` rows
`[prompt, solution, TINY_VERIFY_PROMPT, Yes/No]` (loss on the label only) so the model has
produced "Yes"/"No" before RL^V: without them RL^V starts at ~10 nats of verifier loss and
its gradient wrecks the policy (NOTES.md, Trainer). Measured: these rows teach the label
format and base rate, not yet the discrimination, which is left to RL^V.

The result is an ordinary Hugging Face directory cached under
`~/.cache/rlvfast/warm_start/<hash of the config>/` (or `$RLVFAST_CACHE`), written into a
temporary directory and renamed, so a second run reuses it and a killed run leaves nothing
half-written. Not here: the RL loop (`rlvfast.train`), evaluation (`rlvfast.evaluate`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rlvfast.models import TinyModelConfig, build_tiny_model, load_model, yes_no_ids
from rlvfast.synthetic import Difficulty, make_problems, solution_text

# Bump when the data format or the training procedure changes, so old caches are not reused.
WARM_START_VERSION = 3

# The tiny model's verification prompt: short, since every char is a token and it is fed
# after every solution in RL^V (the sampler's 66-char default would triple each row).
TINY_VERIFY_PROMPT = "\nIs it correct?\n"


def format_prompt(problem_text: str) -> str:
    """The prompt the tiny model sees, in warm start, RL and evaluation alike."""
    return problem_text + "\n"


@dataclass(slots=True)
class WarmStartConfig:
    """Supervised warm start of the tiny model. Defaults: ~1-2 minutes on 2 cores."""
    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 20
    error_rate: float = 0.15      # per step, as in ../shared/README.md's measured run
    # Number of operands of the warm-start chains and how often each appears: mostly the
    # training difficulty (3), some 2 and 4 so that `hard` (4) is not wholly unseen.
    operand_weights: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.6, 4: 0.2})
    # Rows per batch that also teach the verification format: [prompt, solution (wrong steps at
    # verify_error_rate, about half wrong), verify prompt, "Yes"/"No"], loss on the label only.
    # Without them the model has never produced "Yes"/"No" and RL^V starts at ~10 nats of
    # verifier loss whose gradient swamps the policy's (see NOTES.md, Trainer).
    verify_rows: int = 64
    verify_error_rate: float = 0.3
    seed: int = 0
    model: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"WarmStartConfig.{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"WarmStartConfig.lr must be > 0, got {self.lr!r}")
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
        blob = json.dumps({"version": WARM_START_VERSION, **asdict(self)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("RLVFAST_CACHE", Path.home() / ".cache" / "rlvfast")) / "warm_start"


def make_batch(tokenizer, rng: random.Random, config: WarmStartConfig, problem_seed: int):
    """(input_ids, labels) for one batch; labels are -100 where there is no loss and on padding.

    batch_size solution rows (loss on solution + EOS), then verify_rows verification rows
    (loss on the Yes/No label only)."""
    counts = list(config.operand_weights)
    weights = [config.operand_weights[k] for k in counts]
    verify_ids = tokenizer.encode(TINY_VERIFY_PROMPT, add_special_tokens=False)
    yes_id, no_id = yes_no_ids(tokenizer)
    rows: list[tuple[list[int], int]] = []  # (ids, first position with a loss)
    for i in range(config.batch_size + config.verify_rows):
        num_operands = rng.choices(counts, weights)[0]
        problem = make_problems(1, Difficulty(num_operands, 1), seed=problem_seed * config.batch_size + i)[0]
        prompt_ids = tokenizer.encode(format_prompt(problem.problem), add_special_tokens=False)
        if i < config.batch_size:
            solution_ids = tokenizer.encode(solution_text(problem, config.error_rate, rng), add_special_tokens=False)
            rows.append((prompt_ids + solution_ids + [tokenizer.eos_token_id], len(prompt_ids)))
            continue
        solution = solution_text(problem, config.verify_error_rate, rng)
        label = yes_id if solution.endswith(f"\\boxed{{{problem.answer}}}") else no_id
        ids = prompt_ids + tokenizer.encode(solution, add_special_tokens=False) + verify_ids + [label]
        rows.append((ids, len(ids) - 1))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
    for r, (ids, num_prompt) in enumerate(rows):
        input_ids[r, :len(ids)] = torch.tensor(ids)
        labels[r, num_prompt:len(ids)] = torch.tensor(ids[num_prompt:])
    return input_ids, labels


def train_warm_start(out_dir: str | os.PathLike, config: WarmStartConfig, log=print) -> Path:
    """Builds the tiny model in `out_dir` and trains it in place; returns `out_dir`."""
    out = build_tiny_model(out_dir, config.model)
    model, tokenizer = load_model(out)
    model.train()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0, betas=(0.9, 0.99))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    start = time.perf_counter()
    for step in range(config.steps):
        input_ids, labels = make_batch(tokenizer, rng, config, problem_seed=10_000_000 + step)
        loss = model(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(),
                     labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if log and (step % 25 == 0 or step == config.steps - 1):
            log(f"warm start step {step + 1}/{config.steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
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
