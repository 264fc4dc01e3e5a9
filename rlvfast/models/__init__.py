"""Models: loading any causal LM (`load`), the tiny built-in one (`tiny`), and the Llama math
that the sampler's decode path and the trainer's packed forward both run (`llama`).

Imports only `rlvfast.ops` and `rlvfast.cli` below it; nothing here samples or trains.
"""
from rlvfast.models.load import (NO, YES, eos_ids, is_local_path, load_model, save_model, share_files,
                                 transformers_bars, umask, yes_no_ids)
from rlvfast.models.tiny import (BASE_MODEL_DIR, TINY_CHARS, TINY_SPECIALS, TINY_VERIFY_PROMPT, TinyModelConfig,
                                 build_char_tokenizer, build_tiny_model, read_card)

__all__ = ["BASE_MODEL_DIR", "NO", "YES", "TINY_CHARS", "TINY_SPECIALS", "TINY_VERIFY_PROMPT", "TinyModelConfig",
           "build_char_tokenizer", "build_tiny_model", "eos_ids", "is_local_path", "load_model", "read_card",
           "save_model", "share_files", "transformers_bars", "umask", "yes_no_ids"]
