"""`FastTrunk`: a lean forward of Llama-family decoder trunks (Llama, Mistral-less, Qwen2).

The same math as the Hugging Face modules it reads (RMSNorm, rotary embedding, GQA
attention through SDPA, SiLU-gated MLP) with two changes for small-batch decoding on a
CPU: q/k/v and gate/up are each one matmul on weights concatenated once (7 matmuls per
layer become 4), and there is no per-layer module dispatch, hooks or kwargs plumbing. On
the tiny model a decode step is mostly such overhead (see NOTES.md). The fused weights are
rebuilt at the start of every generate() (`refresh`), so a model trained between calls is
never sampled with stale weights, whatever optimizer updated it. Only the last
position gets the final norm, and in a forward of several tokens (prefill, verification) the
last layer computes keys/values for all of them but the rest for the last one only.
Anything else (another architecture, a sliding window, q/k norms, a non-SiLU MLP) is
refused by `FastTrunk.supports` and runs through the HF trunk.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_SUPPORTED = {"llama", "qwen2"}
_LAYER_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_PARTS = ("gate_proj", "up_proj", "down_proj")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # The HF LlamaRMSNorm math, op for op (float32 statistics).
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (HF's rotate_half form) of x (..., hd) with cos/sin broadcast to it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class FusedLayer:
    """One decoder layer's weights with q/k/v and gate/up concatenated, and its norms: 7
    matmuls become 4. Built under no_grad (the sampler, rebuilt every generate()) they are
    plain copies; built with grad enabled (the trainer, every forward) the concatenation is
    in the graph, so gradients reach the model's own parameters."""

    def __init__(self, layer: torch.nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        parts = (attn.q_proj, attn.k_proj, attn.v_proj)
        self.qkv = torch.cat([m.weight for m in parts])  # ((nh + 2 nkv) hd, H)
        self.qkv_bias = None if parts[0].bias is None else torch.cat([m.bias for m in parts])
        self.num_q_rows = attn.q_proj.weight.shape[0]
        self.o = attn.o_proj.weight
        self.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])  # (2 I, H)
        self.down = mlp.down_proj.weight
        self.scaling = attn.scaling
        self.norm_in = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.norm_post = (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)

    def q_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the query projection alone: row views of the fused q/k/v."""
        n = self.num_q_rows
        return self.qkv[:n], None if self.qkv_bias is None else self.qkv_bias[:n]

    def kv_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = self.num_q_rows
        return self.qkv[n:], None if self.qkv_bias is None else self.qkv_bias[n:]

    def mlp_block(self, h: torch.Tensor) -> torch.Tensor:
        """h + MLP(post-attention norm(h)), h (..., H)."""
        gate, up = F.linear(rms_norm(h, *self.norm_post), self.gate_up).chunk(2, dim=-1)
        return h + F.linear(F.silu(gate) * up, self.down)


class FastTrunk:
    def __init__(self, model: torch.nn.Module) -> None:
        self.trunk = model.base_model
        config = model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self._weights: list[FusedLayer] = []

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        config, trunk = model.config, getattr(model, "base_model", None)
        if getattr(config, "model_type", None) not in _SUPPORTED or trunk is model or trunk is None:
            return False
        if getattr(config, "hidden_act", None) != "silu" or getattr(config, "use_sliding_window", False):
            return False
        if getattr(config, "pretraining_tp", 1) != 1 or getattr(config, "mlp_bias", False):
            return False
        for layer in getattr(trunk, "layers", []):
            attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
            if attn is None or mlp is None or any(not hasattr(attn, p) for p in _LAYER_PARTS):
                return False
            if any(not hasattr(mlp, p) for p in _MLP_PARTS) or hasattr(attn, "q_norm"):
                return False
            if getattr(attn.o_proj, "bias", None) is not None:
                return False
        return all(hasattr(trunk, a) for a in ("embed_tokens", "rotary_emb", "norm", "layers"))

    def refresh(self) -> None:
        """Rebuilds the fused weights from the model's parameters as they are now. The Sampler
        calls it at the start of every generate(): parameter versions cannot tell when weights
        changed, since a fused optimizer (AdamW(fused=True)) and `.data` writes update them in
        place without bumping `_version`."""
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable outside inference mode
            self._weights = [FusedLayer(layer) for layer in self.trunk.layers]

    def last_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        """input_ids (B, T), positions (B, T), additive mask (B, 1, T, S) -> final-norm hidden (B, H) of column T-1."""
        if not self._weights:
            self.refresh()
        rows, num_new = input_ids.shape
        nh, nkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        h = self.trunk.embed_tokens(input_ids)  # (B, T, H)
        cos, sin = self.trunk.rotary_emb(h, positions)  # (B, T, hd) each
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
        last_layer = len(self._weights) - 1
        for layer_idx, w in enumerate(self._weights):
            x = rms_norm(h, *w.norm_in)
            if layer_idx == last_layer and num_new > 1:
                # Only column T-1 is read out: the last layer needs keys/values of every new
                # column (they are attended to) but queries, attention, o_proj and the MLP of
                # the last one only (a verify forward of 17 tokens saves ~1/4 on the tiny model).
                q = F.linear(x[:, -1:], *w.q_rows())  # (B, 1, nh hd)
                k, v = F.linear(x, *w.kv_rows()).split([nkv * hd, nkv * hd], dim=-1)
                q = rotate(q.view(rows, 1, nh, hd).transpose(1, 2), cos[:, :, -1:], sin[:, :, -1:])  # (B, nh, 1, hd)
                h, mask = h[:, -1:], mask[:, :, -1:]
            else:
                qkv = F.linear(x, w.qkv, w.qkv_bias)  # (B, T, (nh + 2 nkv) hd)
                q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
                q = rotate(q.view(rows, num_new, nh, hd).transpose(1, 2), cos, sin)  # (B, nh, T, hd)
            k = rotate(k.view(rows, num_new, nkv, hd).transpose(1, 2), cos, sin)  # (B, nkv, T, hd)
            v = v.view(rows, num_new, nkv, hd).transpose(1, 2)
            k, v = cache.update(k, v, layer_idx)  # (B, nkv, S, hd)
            h = w.mlp_block(h + F.linear(self._attention(q, k, v, mask, w.scaling), w.o))
        norm = self.trunk.norm
        return rms_norm(h[:, -1], norm.weight, norm.variance_epsilon)  # (B, H)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                   scale: float) -> torch.Tensor:
        """q (B, nh, Tq, hd), k/v (B, nkv, S, hd), mask (B, 1, Tq, S) -> (B, Tq, nh hd)."""
        rows, nh, num_q, hd = q.shape
        rep = nh // self.num_kv_heads
        if num_q == 1 and rep > 1:  # one query: the rep query heads of a kv head as rep "tokens"
            out = F.scaled_dot_product_attention(q.reshape(rows, self.num_kv_heads, rep, hd), k, v,
                                                 attn_mask=mask, scale=scale)  # (B, nkv, rep, hd)
            return out.reshape(rows, 1, nh * hd)
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, nh, Tq, hd)
        return out.transpose(1, 2).reshape(rows, num_q, nh * hd)
