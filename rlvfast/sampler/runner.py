"""`ModelRunner`: the three forwards of the sampler on any Hugging Face causal LM.

`prefill` (left-padded prompts -> next-token logits), `decode_step` (one token per row ->
logits) and `verify` (a verification tail through a row's own KV cache -> P("Yes")).
Each calls the decoder trunk (`model.base_model`) with an explicit 4D mask and explicit
positions into our `KVCache`, then applies the LM head to the last position only, so a
prefill never materializes [B, T, vocab] logits. P("Yes") is `rlvfast.ops.verifier_scores`
on the final hidden state. A head that is not a plain bias-free linear map (a bias, logit
scaling or soft-capping in the model's forward) falls back to the model's own forward with
`logits_to_keep=1` and a softmax over those logits. Not here: sampling or stopping.
"""
from __future__ import annotations

import inspect

import torch

from rlvfast.sampler.fast_trunk import FastTrunk
from rlvfast.sampler.kv_cache import KVCache

# Config fields of HF models whose forward rescales logits after lm_head (Cohere, Gemma2, Granite, ...).
_LOGIT_TRANSFORMS = ("logit_scale", "final_logit_softcapping", "logits_scaling", "output_multiplier_scale")


def p_yes(hidden: torch.Tensor, weight: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """P("Yes") under the full-vocabulary softmax: hidden [B, H], weight [V, H] -> [B] float32."""
    from rlvfast import ops

    yes, _ = ops.verifier_scores(hidden, weight, yes_id, no_id)
    return yes.float()


class ModelRunner:
    def __init__(self, model: torch.nn.Module, yes_id: int, no_id: int, fast_path: bool = True) -> None:
        self.model = model
        self.trunk = model.base_model
        if self.trunk is model:
            raise ValueError(f"{type(model).__name__} has no separate decoder trunk (base_model); "
                             "the sampler needs a *ForCausalLM model")
        head = model.get_output_embeddings()
        self.head_weight = head.weight  # (V, H)
        config = model.config
        self.is_plain_head = (isinstance(head, torch.nn.Linear) and head.bias is None
                              and not any(getattr(config, name, None) not in (None, 0, 1, 1.0)
                                          for name in _LOGIT_TRANSFORMS))
        self.yes_id, self.no_id = yes_id, no_id
        self.device = self.head_weight.device
        self.dtype = self.head_weight.dtype
        self.max_positions = getattr(config, "max_position_embeddings", None)
        params = inspect.signature(self.trunk.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renamed it
        # Llama-family trunks run through a lean forward; others (and fast_path=False) through HF's.
        self.fast = FastTrunk(model) if fast_path and self.is_plain_head and FastTrunk.supports(model) else None

    def sync_weights(self) -> None:
        """Called at the start of every generate()/score(): the model may have been trained since."""
        if self.fast is not None:
            self.fast.refresh()

    def new_cache(self, num_rows: int, capacity: int) -> KVCache:
        return KVCache(num_rows, capacity, self.device, self.dtype)

    # ------------------------------------------------------------------ forwards
    def _last_hidden(self, cache: KVCache, input_ids: torch.Tensor, is_valid: torch.Tensor) -> torch.Tensor:
        positions, mask = cache.append_slots(is_valid)
        if self.fast is not None:
            return self.fast.last_hidden(input_ids, positions, mask, cache)
        out = self.trunk(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_arg: cache})
        return out.last_hidden_state[:, -1]  # (B, H) final-norm hidden state of the last column

    def _full_forward_logits(self, cache: KVCache, input_ids: torch.Tensor, is_valid: torch.Tensor) -> torch.Tensor:
        positions, mask = cache.append_slots(is_valid)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_arg: cache})
        return out.logits[:, -1].float()  # (B, V)

    def logits(self, cache: KVCache, input_ids: torch.Tensor, is_valid: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, V) float32 after input_ids (B, T) are appended to `cache`."""
        if not self.is_plain_head:
            return self._full_forward_logits(cache, input_ids, is_valid)
        hidden = self._last_hidden(cache, input_ids, is_valid)  # (B, H)
        return (hidden @ self.head_weight.T).float()  # (B, V)

    def scores(self, cache: KVCache, input_ids: torch.Tensor, is_valid: torch.Tensor) -> torch.Tensor:
        """P("Yes") (B,) float32 at the last column after input_ids (B, T) are appended."""
        if not self.is_plain_head:
            logits = self._full_forward_logits(cache, input_ids, is_valid)
            return torch.softmax(logits, dim=-1)[:, self.yes_id]
        hidden = self._last_hidden(cache, input_ids, is_valid)
        return p_yes(hidden, self.head_weight, self.yes_id, self.no_id)

    # ------------------------------------------------------------------ the sampler's phases
    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], capacity: int) -> tuple[KVCache, torch.Tensor]:
        """Left-padded prompts -> (cache of len(prompts) rows, next-token logits (P, V))."""
        width = max(len(p) for p in prompts)
        input_ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)  # pad id irrelevant: masked
        is_valid = torch.zeros(len(prompts), width, dtype=torch.bool, device=self.device)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            is_valid[row, width - len(ids):] = True
        cache = self.new_cache(len(prompts), max(capacity, width))
        return cache, self.logits(cache, input_ids, is_valid)

    @torch.inference_mode()
    def decode_step(self, cache: KVCache, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids (B,) -> next-token logits (B, V)."""
        is_valid = torch.ones(token_ids.shape[0], 1, dtype=torch.bool, device=self.device)
        return self.logits(cache, token_ids[:, None], is_valid)

    @torch.inference_mode()
    def verify(self, cache: KVCache, tails: list[list[int]]) -> torch.Tensor:
        """Feeds each row's tail (`verification.verification_tail`: [the last sampled id unless
        an EOS, verify ids]) through `cache`, left-padded to one width -> P("Yes") (B,)."""
        width = max(len(t) for t in tails)
        input_ids = torch.tensor([[0] * (width - len(t)) + t for t in tails], dtype=torch.long,
                                 device=self.device)  # (B, width); pad id irrelevant: masked
        is_valid = torch.tensor([[False] * (width - len(t)) + [True] * len(t) for t in tails], device=self.device)
        return self.scores(cache, input_ids, is_valid)
