"""LoRA through `peft`: adding adapters to a model, the adapted weight of one linear layer, and
reading an adapter directory back.

`add_lora` wraps a loaded model's linear layers with peft LoRA adapters (the base weights frozen,
the adapters trainable, kept in float32 when the base is bf16) and returns the `PeftModel`, whose
`save_pretrained` writes the adapter alone (a training checkpoint). The model object itself keeps
its class and modules, so the fast paths (`rlvfast.models.llama`) and HF's forward both run it.

`linear_weight(module)` is the rule those fast paths use for every projection: a plain
`nn.Linear`'s (weight, bias), or for a peft LoRA layer the adapted weight
`W + scaling * B @ A` summed over the active adapters, built in the autograd graph, so the
gradient reaches A and B exactly as through peft's own forward (x W^T + scaling x A^T B^T: the
same product, reassociated). `lora_reason` names what this rule does not reproduce (dropout on
the adapter input, DoRA and other variants, adapter biases); such models run HF's forward.

`load_adapter_dir` reads a directory `save_pretrained` of a PeftModel wrote (adapter_config.json,
adapter weights, the tokenizer beside them) as one plain model: the base named in its config,
the adapter merged in.

Not here: which modules get adapters by default (the trainer's `--lora-target-modules`), saving
the merged final model (the trainer merges with `merge_and_unload` and saves the plain model).
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"


def is_lora(module: torch.nn.Module) -> bool:
    """A peft LoRA layer (it wraps `base_layer` and holds `lora_A` / `lora_B`)."""
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "lora_B")


def _active(module: torch.nn.Module) -> list[str]:
    """The adapters that change this layer's output now (none when disabled or merged in)."""
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return []
    return [a for a in module.active_adapters if a in module.lora_A]


def lora_reason(module: torch.nn.Module) -> str | None:
    """None when `linear_weight` reproduces this layer's forward; else why not, in a few words."""
    if not is_lora(module):
        return None
    for name in _active(module):
        dropout = module.lora_dropout[name]
        if not isinstance(dropout, torch.nn.Identity) and getattr(dropout, "p", 0.0) > 0:
            return f"lora_dropout={dropout.p}"
        if name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name, False):
            return "a LoRA variant (DoRA or another)"
        if getattr(module, "lora_bias", {}).get(name, False):
            return "lora_bias=True"
    return None


def linear_weight(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (out, in), bias (out,) or None) of a linear layer as its forward applies it: a plain
    layer's own, or a LoRA layer's base weight plus its active adapters' delta, in the graph."""
    if not is_lora(module):
        return module.weight, module.bias
    base = module.base_layer
    weight = base.weight
    for name in _active(module):
        delta = module.lora_B[name].weight @ module.lora_A[name].weight  # (out, r) @ (r, in)
        if getattr(module, "fan_in_fan_out", False):
            delta = delta.T
        weight = weight + (delta * module.scaling[name]).to(weight.dtype)
    return weight, base.bias


def add_lora(model: torch.nn.Module, r: int, alpha: float, target_modules: list[str]):
    """The `PeftModel` around `model` with rank-`r` adapters (scaling alpha / r, no dropout, no
    bias) on the modules named in `target_modules` (peft's matching: a suffix such as "q_proj",
    or "all-linear"); `model` itself is changed in place and stays the object to run."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    with _quiet_peft():
        return get_peft_model(model, config)


def is_adapter_dir(path: str | Path) -> bool:
    """A directory a PeftModel's save_pretrained wrote (adapter_config.json), not a full model."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on (its config's base_model_name_or_path)."""
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""


def attach_adapter(model: torch.nn.Module, path: str | Path, trainable: bool):
    """The `PeftModel` of `model` with the adapter saved in `path` (trainable: to go on training)."""
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


@contextmanager
def _quiet_peft():
    """peft calls transformers' deprecated `is_gradient_checkpointing`: a FutureWarning meant for
    peft's authors, not for whoever trains."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
