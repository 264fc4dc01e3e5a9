"""Loads causal LMs and tokenizers; the ids the verifier and the sampler need from them.

`load_model` takes a local save_pretrained folder, a GGUF file (dequantized once to a plain
float32 model with no quantizer attached, so it trains and `save_pretrained` writes ordinary
safetensors), or a Hugging Face hub id (the local HF cache, offline with HF_HUB_OFFLINE=1, or
the hub where the network allows), or a LoRA adapter folder (a LoRA run's checkpoint: its base,
named in adapter_config.json, with the adapter merged in; `rlvfast.models.lora`). `is_local_path`
is the rule that tells a path from a hub id.
Missing or empty local paths and unloadable hub ids raise `rlvfast.cli.UserError` naming them.
`yes_no_ids` checks that the verifier's answers are single tokens; `eos_ids` collects every
end-of-sequence id. The tiny built-in model is built in `rlvfast.models.tiny`; training and
sampling live elsewhere.
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from rlvfast.cli import UserError
from rlvfast.models import lora

YES, NO = "Yes", "No"


def umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_files(folder: str | os.PathLike) -> None:
    """Gives the files directly in `folder` the permissions the umask allows (usually 0644):
    transformers' save_pretrained writes model.safetensors as 0600, unreadable to other users."""
    mask = umask()
    for path in Path(folder).iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~mask)


def yes_no_ids(tokenizer) -> tuple[int, int]:
    """Token ids of "Yes" and "No"; a clear error if either is not a single token."""
    ids = []
    for word in (YES, NO):
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"the verifier needs {word!r} as a single token, but this tokenizer splits it into "
                f"{len(encoded)} tokens {encoded}; use a tokenizer with {word!r} in its vocabulary "
                f"or add it with tokenizer.add_tokens([{word!r}]) and resize the embeddings")
        ids.append(encoded[0])
    return ids[0], ids[1]


def eos_ids(model, tokenizer) -> list[int]:
    """Every end-of-sequence id: the generation config's (it may list several) and the tokenizer's."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                   tokenizer.eos_token_id):
        if source is None:
            continue
        for i in (source if isinstance(source, (list, tuple)) else [source]):
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the model and tokenizer define no eos token id; set generation_config.eos_token_id")
    return ids


# A hub id as huggingface_hub accepts it: "name" or "org/name", word characters, "-" and ".".
_HUB_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]+$")
# What save_pretrained writes: the config and the weights (single file or sharded).
_WEIGHT_GLOBS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                 "pytorch_model.bin.index.json")


def is_local_path(spec: str | os.PathLike) -> bool:
    """True when `spec` means a local file or folder, False when it means a Hugging Face hub id.

    Local: anything that exists on disk, a `.gguf` name, or a name no hub id can have (absolute,
    starting with "." or "~", more than one "/", a backslash, ".." or "--"). Everything else
    ("Qwen/Qwen2.5-0.5B-Instruct", "gpt2") is a hub id, looked up in the local Hugging Face cache
    and, where the network allows, on the hub. A CLI checks a missing local path with
    `is_local_path(s) and not os.path.exists(s)`.
    """
    spec = os.fspath(spec)
    if os.path.exists(spec) or spec.endswith(".gguf"):
        return True
    if spec.startswith((".", "~")) or ".." in spec or "--" in spec or len(spec) > 96:
        return True
    return not _HUB_ID.match(spec)


def _check_model_dir(path: Path) -> None:
    """A clear error when a folder does not hold a save_pretrained model."""
    files = sorted(p.name for p in path.iterdir())
    ggufs = [f for f in files if f.endswith(".gguf")]
    has_weights = any(any(path.glob(g)) for g in _WEIGHT_GLOBS)
    if (path / "config.json").is_file() and has_weights:
        return
    hint = (f"; it holds {', '.join(ggufs)}: pass the .gguf file itself, e.g. {path / ggufs[0]}" if ggufs else "")
    raise UserError(f"model folder {path} holds no model: expected config.json and weights "
                    f"(model.safetensors or pytorch_model.bin, possibly sharded) plus tokenizer files, "
                    f"as save_pretrained writes them; found {files or 'nothing'}{hint}")


def _load_gguf(path: Path):
    """Tokenizer and a plain float32 model from a .gguf, dequantized once on load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    folder, name = str(path.resolve().parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # dequantize=True: plain nn.Linear weights and no quantizer left on the model, so it trains
    # and save_pretrained writes ordinary safetensors (a GGUF quantizer is "not serializable").
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        raise RuntimeError(f"{path}: transformers kept a GGUF quantizer on the model although dequantize=True "
                           f"was asked; save_pretrained would refuse it")
    return tokenizer, model


def _load_hub(spec: str):
    """Tokenizer and model by hub id (the local HF cache first when offline), errors naming the id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
    except OSError as e:  # transformers turns missing repos, files and connections into OSError
        raise UserError(f"model {spec!r} is not a local file or folder, and loading it as a Hugging Face "
                        f"hub id failed: {e}") from e
    return tokenizer, model


def _load_adapter_dir(path: Path):
    """Tokenizer (the folder's) and the plain model: the adapter's base with the adapter merged in."""
    from transformers import AutoTokenizer

    base = lora.adapter_base(path)
    if not base:
        raise UserError(f"LoRA adapter folder {path}: its adapter_config.json names no base model "
                        f"(base_model_name_or_path)")
    if is_local_path(base) and lora.is_adapter_dir(base):
        raise UserError(f"LoRA adapter folder {path}: its base {base} is another adapter")
    model, _ = load_model(base)
    model = lora.attach_adapter(model, path, trainable=False).merge_and_unload()
    return AutoTokenizer.from_pretrained(str(path)), model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Returns (model, tokenizer) in float32, eval mode, on `device`, after checking that "Yes"
    and "No" are single tokens. `path` is a save_pretrained folder, a `.gguf` file, or a hub id
    (see `is_local_path`). Missing or empty local paths raise `UserError` naming the path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = os.fspath(path)
    with transformers_bars(sys.stderr.isatty()):  # a log file gets no loading bars
        if not is_local_path(spec):
            tokenizer, model = _load_hub(spec)
        elif spec.endswith(".gguf"):
            tokenizer, model = _load_gguf(Path(spec))
        elif not os.path.isdir(spec):
            problem = "is not a folder" if os.path.exists(spec) else "not found"
            raise UserError(f"model path {problem}: {spec} (expected a save_pretrained folder, a .gguf file "
                            f"or a hub id such as Qwen/Qwen2.5-0.5B-Instruct)")
        elif lora.is_adapter_dir(spec):
            tokenizer, model = _load_adapter_dir(Path(spec))
        else:
            _check_model_dir(Path(spec))
            tokenizer = AutoTokenizer.from_pretrained(spec)
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
    model = model.to(device)
    model.eval()
    yes_no_ids(tokenizer)
    return model, tokenizer



def save_model(model, tokenizer, folder: str | os.PathLike) -> None:
    """Writes a Hugging Face model folder (safetensors weights, config, tokenizer when given) that
    `load_model` and transformers read; no progress bar, files readable as the umask allows."""
    with transformers_bars(False):
        model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    share_files(folder)

@contextmanager
def transformers_bars(enabled: bool):
    """transformers' progress bars (loading, "Writing model shards") on or off inside the block."""
    from transformers.utils import logging as hf_logging

    def switch(on: bool) -> None:
        if on:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()

    was_enabled = hf_logging.is_progress_bar_enabled()
    switch(enabled)
    try:
        yield
    finally:
        switch(was_enabled)
