"""The tiny built-in model: a small Llama with a character-level tokenizer, written to disk.

`build_tiny_model` writes it as an ordinary Hugging Face directory, so tiny and real models go
through the same loading code (`rlvfast.models.load`). `TINY_VERIFY_PROMPT` is the short
verification prompt it is trained and scored with. `BASE_MODEL_DIR` is the trained base model
shipped in the package (built by `python -m rlvfast.pretrain`), `read_card` its card.json.
Training it lives in `rlvfast.train` (`warm_start`, which also decides when to use the shipped one).
"""
from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvfast.models.load import NO, YES, save_model

# The tiny base model shipped with the package: `python -m rlvfast.pretrain --out` this folder with
# the defaults rebuilds it (README.md and card.json inside say what it is and how good).
BASE_MODEL_DIR = Path(__file__).resolve().parent / "base"

# The tiny model's verification prompt: short, since every char is a token and it is fed
# after every solution in RL^V (the sampler's 66-char default would triple each row).
TINY_VERIFY_PROMPT = "\nIs it correct?\n"
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
    save_model(model, tok, out)
    return out


def read_card(model_dir: str | os.PathLike = BASE_MODEL_DIR) -> dict | None:
    """`model_dir`'s card.json (written by `python -m rlvfast.pretrain`), or None when it has none."""
    path = Path(model_dir) / "card.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())
