"""The random model the sampler and trainer steps run: a Qwen2 of `ModelShape`'s shape, written
once per run as a Hugging Face folder (bf16 safetensors) with a character tokenizer padded with
filler tokens to the model's vocabulary, so the lm head and the sampling run at full width.

The device has no network and no Qwen weights, and speed depends on shapes only; the text a random
model writes is noise (no sample is graded right; the work per step is the same). Not here: timing.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gpu_sizes import ModelShape
from rlvfast.models import NO, TINY_CHARS, TINY_SPECIALS, TINY_VERIFY_PROMPT, YES, save_model

# The tiny model's 16-character verification prompt: 16 tokens here, near Qwen2.5's chat
# verification turn (~19 tokens), so the in-cache verification does a realistic amount of work.
VERIFY_PROMPT = TINY_VERIFY_PROMPT


def padded_char_tokenizer(vocab_size: int):
    """rlvfast's character tokenizer ("Yes" and "No" whole tokens) with filler tokens <fNNN> up to
    vocab_size ids; text encodes character by character, sampled filler ids decode to their names."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    base = TINY_SPECIALS + TINY_CHARS
    num_fillers = vocab_size - len(base) - 2  # - "Yes", "No"
    if num_fillers < 0:
        raise ValueError(f"vocab_size={vocab_size} is below the {len(base) + 2} tokens of the character tokenizer")
    vocab = {tok: i for i, tok in enumerate(base + [f"<f{i}>" for i in range(num_fillers)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.add_tokens([YES, NO])
    return tok


def model_dir(shape: ModelShape, work_dir: Path, device: torch.device) -> Path:
    """The random model's folder under work_dir, built on `device` the first time it is asked for
    (written beside it and renamed, so a step killed while writing leaves no half folder)."""
    folder = work_dir / "model"
    if folder.is_dir():
        return folder
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = padded_char_tokenizer(shape.vocab_size)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=shape.hidden_size,
                         intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
                         num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    partial = work_dir / "model.partial"
    save_model(model, tok, partial)
    partial.rename(folder)
    return folder


def problem_texts(num: int) -> list[str]:
    """num synthetic arithmetic problems (the trainer's default task), as prompt text."""
    from rlvfast.tasks.synthetic import make_problems

    return [p.problem for p in make_problems(num, "test", seed=0)]
