"""Loads causal LMs and tokenizers, and builds the tiny built-in model.

`load_model` takes a local Hugging Face directory, a hub id (where the network allows),
or a GGUF file (transformers' `gguf_file`, dequantized to float on load). `build_tiny_model`
writes a small Llama-style model with a character-level tokenizer as an ordinary Hugging
Face directory, so tiny and real models go through the same loading code. `yes_no_ids`
checks that the verifier's answers are single tokens. Training and sampling live elsewhere.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass
from pathlib import Path

import torch

YES, NO = "Yes", "No"
# Characters of the built-in tokenizer: printable ASCII and newline; anything else -> <unk>.
TINY_CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
TINY_SPECIALS = ["<pad>", "<eos>", "<unk>"]


@dataclass(slots=True)
class TinyModelConfig:
    """The built-in Llama-style model. Defaults: 3 layers x 128 wide, the size that learns
    3-operand arithmetic in a few minutes on 2 cores (see ../shared/README.md)."""
    num_layers: int = 3
    hidden_size: int = 128
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TinyModelConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"TinyModelConfig.hidden_size ({self.hidden_size}) must be divisible "
                             f"by num_heads ({self.num_heads})")


def build_char_tokenizer():
    """A character-level fast tokenizer; "Yes" and "No" are added as whole tokens."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + TINY_CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()  # concatenate characters back, no spaces between
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                  unk_token="<unk>")
    tok.add_tokens([YES, NO])
    return tok


def build_tiny_model(out_dir: str | os.PathLike, config: TinyModelConfig | None = None) -> Path:
    """Writes a randomly initialised tiny Llama and its char tokenizer to `out_dir`."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = config or TinyModelConfig()
    tok = build_char_tokenizer()
    hf_config = LlamaConfig(
        vocab_size=len(tok), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(hf_config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


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


def load_model(path: str | os.PathLike, gguf_file: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", check_yes_no: bool = True):
    """Returns (model, tokenizer) in eval mode. `path` may be a directory, a hub id, or a
    `.gguf` file (then its directory and file name are split for transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(path)
    if gguf_file is None and path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file not found: {path}")
        path, gguf_file = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    elif os.path.sep in path and not os.path.exists(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(device)
    model.eval()
    if check_yes_no:
        yes_no_ids(tokenizer)
    return model, tokenizer
