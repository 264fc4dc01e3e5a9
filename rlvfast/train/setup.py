"""What a run of `python -m rlvfast.train` builds before its first step, each piece checked early.

The device, the training problems (a bad --data fails before any model loads), a custom reward
function, the seeds, the model ('tiny': the shipped base model, or the cached warm start when the
warm-start options differ from its card's; the user's model; or the checkpoint being resumed)
in --dtype's weights, with LoRA adapters (--lora-r), with the frozen reference for the KL term,
the optimizer and its learning-rate schedule; and
for `--resume`: the latest checkpoint, whether the options given may resume it
(`resume_state`), its optimizer / schedule / RNG state (`restore`), and its options for the
command line (`saved_config`). Input errors are `UserError`s naming the option.

Not here: the run directory's lock and fresh/overwrite rule (`rlvfast.train.run_dir`), writing
checkpoints (`rlvfast.train.checkpoint`), the steps (`rlvfast.train.loop`).
"""
from __future__ import annotations

import importlib
import math
import random
from functools import partial
from pathlib import Path

import numpy as np
import torch

from rlvfast.cli import UserError
from rlvfast.tasks.problems import DataError, Problem
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import precision
from rlvfast.train.config import TrainConfig, resume_differences


def pick_device(name: str) -> torch.device:
    """--device: auto (cuda when there is one, else cpu), cpu or cuda."""
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
    from rlvfast.tasks.problems import column_fields, load_problems
    try:
        fields = column_fields(config.problem_field, config.answer_field, config.id_field)
        problems = load_problems(config.data, fields=fields, split=config.data_split, default_split="train")
    except (DataError, FileNotFoundError, ImportError) as e:  # ImportError: .parquet without pyarrow
        raise UserError(f"--data: {e}") from e  # its message names the file (and line)
    if not problems:
        raise UserError(f"--data {config.data}: no problems in it")
    return list(problems)


def load_reward_fn(spec: str):
    """--reward 'module:function': the function, imported."""
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--reward {spec!r}: cannot import {fn_name!r} from module {module_name!r} ({e})") from e
    if not callable(fn):
        raise UserError(f"--reward {spec!r} is not callable")
    return fn


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def load_models(config: TrainConfig, device: torch.device, resume_from: Path | None, log):
    """(model, tokenizer, ref_model, adapter): the model to train, from the checkpoint when
    resuming, else from its start ('tiny': the shipped base model, or the cached warm start when
    the warm-start options differ from its card's; else --model), in --dtype's weights; with
    --lora-r, the start with LoRA adapters (new, or the checkpoint's), and `adapter` the
    `PeftModel` whose save_pretrained writes them (else None); the reference for the KL term
    (`--kl-coef` > 0, else None) is always the start, frozen."""
    from rlvfast.models import load_model

    init_path = start_path(config, log)
    dtype = precision.weight_dtype(config.dtype)
    model, tokenizer = load_model(init_path if config.lora_r else resume_from or init_path, device=device)
    model.to(dtype)
    adapter = _add_lora(model, config, init_path, resume_from) if config.lora_r else None
    if config.gradient_checkpointing and model.supports_gradient_checkpointing:  # HF's forward (the fallback)
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref_model = None
    if config.kl_coef > 0:
        ref_model, _ = load_model(init_path, device=device)
        ref_model.to(dtype).requires_grad_(False)
    return model, tokenizer, ref_model, adapter


def _add_lora(model: torch.nn.Module, config: TrainConfig, init_path: str, resume_from: Path | None):
    """The PeftModel of `model` (changed in place) with the checkpoint's adapter or new ones; its
    adapter_config.json names `init_path` as the base, so the checkpoint loads on its own."""
    from rlvfast.models import lora

    if resume_from is not None:
        adapter = lora.attach_adapter(model, resume_from, trainable=True)
    else:
        try:
            adapter = lora.add_lora(model, config.lora_r, config.lora_alpha, config.lora_target_modules)
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            raise UserError(f"--lora-target-modules {' '.join(config.lora_target_modules)}: {e}") from e
    base = init_path if not Path(init_path).exists() else str(Path(init_path).resolve())
    adapter.peft_config[adapter.active_adapter].base_model_name_or_path = base
    return adapter


def start_path(config: TrainConfig, log) -> str:
    """Where a fresh run's weights come from: for 'tiny', the shipped base model or the cached
    warm start (`rlvfast.train.warm_start`), else --model."""
    if config.is_tiny:
        from rlvfast.train.warm_start import warm_start_path
        return str(warm_start_path(config.warm_start_config(), log=log))
    return config.model


def final_model(config: TrainConfig, state: dict[str, torch.Tensor], log) -> torch.nn.Module:
    """The run's architecture on the CPU, unsharded, in --dtype's weights, holding `state` (the trained
    model's full state dict, gathered on rank 0 to write OUT/final under torchrun); with --lora-r the
    adapters are merged into the weights, as one process's final/ (`merge_and_unload`)."""
    from rlvfast.models import load_model

    init_path = start_path(config, log)
    model, _ = load_model(init_path, device=torch.device("cpu"))
    model.to(precision.weight_dtype(config.dtype))
    adapter = _add_lora(model, config, init_path, None) if config.lora_r else None
    model.load_state_dict(state)
    return adapter.merge_and_unload() if adapter is not None else model


def make_optimizer(params, config: TrainConfig):
    """(AdamW over `params`, its schedule: linear warmup over `config.warmup` steps, then constant or
    a cosine decay to 10% of the peak at the last step, `config.lr_schedule`)."""
    # fused: one kernel over all parameters (CPU: ~6 ms per step instead of 21-33 ms; docs/design/trainer.md)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.99), fused=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, config))


def lr_factor(config: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based) as a fraction of --lr."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - 1 - config.warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def latest_checkpoint(out: str) -> Path:
    """OUT's newest complete checkpoint; a UserError when there is none."""
    try:
        return ckpt.latest_checkpoint(out)
    except ckpt.CheckpointError as e:
        raise UserError(str(e)) from e


def resume_state(config: TrainConfig) -> tuple[Path, dict]:
    """(checkpoint, trainer state) to resume from; a UserError when an option that changes the
    run differs from the checkpoint's (the weights and optimizer come from the checkpoint, so a
    new --lr or --model would be ignored yet recorded), or when --steps is below its step."""
    path = latest_checkpoint(config.out)
    state = ckpt.load_trainer_state(path)
    if differences := resume_differences(state.get("config", {}), config):
        raise UserError(f"--resume from {path}: {len(differences)} option(s) differ from the checkpoint's and "
                        f"would change the run: {'; '.join(differences)}. Pass the checkpoint's values, or "
                        f"start a new run with another --out")
    if config.steps < state["step"]:
        raise UserError(f"--resume from {path}: --steps {config.steps} is below the checkpoint's step "
                        f"{state['step']}; pass --steps {state['step']} or more")
    return path, state


def restore(optimizer, scheduler, state: dict) -> tuple[int, int, dict]:
    """Put a checkpoint's optimizer, schedule and RNG state back; returns (step, number of
    skipped steps in a row, the warm start's evaluation) to go on from."""
    if state["optimizer"] is not None:  # None: put back already (a sharded model's, `ckpt.load_full_optimizer`)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    return state["step"], state["num_bad_steps"], state.get("warm_start_eval", {})


def saved_config(out: str) -> dict:
    """The options OUT's latest checkpoint was trained with; {} without one (`train` says why).
    mmap: the optimizer state in the same file is not read."""
    try:
        path = ckpt.latest_checkpoint(out)
    except ckpt.CheckpointError:
        return {}
    state = torch.load(path / ckpt.STATE_FILE, map_location="cpu", weights_only=False, mmap=True)
    return dict(state.get("config", {}))
