"""`FastTrunk`: a lean forward of Llama-family decoder trunks (Llama, Qwen2, Qwen3).

The layer math is `rlvfast.models.llama` (RMSNorm, rotary embedding, GQA attention through
SDPA, SiLU-gated MLP, fused q/k/v and gate/up weights), the one copy the trainer's forward also
runs. Two changes from the Hugging Face modules for small-batch decoding on a CPU: q/k/v and
gate/up are each one matmul on weights concatenated once (7 matmuls per layer become 4), and
there is no per-layer module dispatch, hooks or kwargs plumbing. On the tiny model a decode
step is mostly such overhead (docs/design/sampler.md, "FastTrunk"). The fused weights are
rebuilt at the start of every generate() (`refresh`), so a model trained between calls is never
sampled with stale weights, whatever optimizer updated it. Only the last position gets the
final norm, and in a forward of several tokens (prefill, verification) the last layer computes
keys/values for all of them but the rest for the last one only. Anything else (another
architecture, a sliding window, a non-SiLU MLP; `llama.unsupported_reason`) is refused by
`FastTrunk.supports`, with one warning naming the model_type and why, and runs through the
HF trunk.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rlvfast.models import llama
from rlvfast.models.llama import FusedLayer, HeadShape, attention, rms_norm, rotate, split_heads, to_heads


class FastTrunk:
    def __init__(self, model: torch.nn.Module) -> None:
        self.trunk = model.base_model
        self.shape = HeadShape.from_config(model.config)
        self._weights: list[FusedLayer] = []

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """`llama.supports(model)`, warning once when the sampler falls back to the HF trunk."""
        return llama.warn_unsupported(model, "the sampler's fast trunk")

    def refresh(self) -> None:
        """Rebuilds the fused weights from the model's parameters as they are now. The Sampler
        calls it at the start of every generate(): parameter versions cannot tell when weights
        changed, since a fused optimizer (AdamW(fused=True)) and `.data` writes update them in
        place without bumping `_version`."""
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable outside inference mode
            self._weights = [FusedLayer(layer, self.shape) for layer in self.trunk.layers]

    def last_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        """input_ids (B, T), positions (B, T), additive mask (B, 1, T, S) -> final-norm hidden (B, H) of column T-1."""
        if not self._weights:
            self.refresh()
        h = self.trunk.embed_tokens(input_ids)  # (B, T, H)
        cos, sin = self.trunk.rotary_emb(h, positions)  # (B, T, hd) each
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
        last_layer = len(self._weights) - 1
        for layer_idx, w in enumerate(self._weights):
            if layer_idx == last_layer and input_ids.shape[1] > 1:
                # Only column T-1 is read out: the last layer needs keys/values of every new
                # column (they are attended to) but queries, attention, o_proj and the MLP of
                # the last one only (a verify forward of 17 tokens saves ~1/4 on the tiny model).
                q, k, v = self._last_query_heads(w, h, cos, sin)
                h, mask = h[:, -1:], mask[:, :, -1:]
            else:
                q, k, v = split_heads(w.project(h), w, cos, sin)  # (B, nh, T, hd), (B, nkv, T, hd) x2
            k, v = cache.update(k, v, layer_idx)  # (B, nkv, S, hd)
            h = w.mlp_block(h + F.linear(attention(q, k, v, mask, w.scaling), w.o))
        norm = self.trunk.norm
        return rms_norm(h[:, -1], norm.weight, norm.variance_epsilon)  # (B, H)

    def _last_query_heads(self, w: FusedLayer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q of column T-1 only (B, nh, 1, hd); k and v of every column (B, nkv, T, hd)."""
        nh, nkv, hd = self.shape.num_heads, self.shape.num_kv_heads, self.shape.head_dim
        x = rms_norm(h, *w.norm_in)
        q = F.linear(x[:, -1:], *w.q_rows())  # (B, 1, nh hd)
        k, v = F.linear(x, *w.kv_rows()).split([nkv * hd, nkv * hd], dim=-1)
        q = rotate(w.norm_q(to_heads(q, nh, hd)), cos[:, :, -1:], sin[:, :, -1:])
        return q, rotate(w.norm_k(to_heads(k, nkv, hd)), cos, sin), to_heads(v, nkv, hd)
