"""The Llama-family decoder math that the sampler's forward and the trainer's forward share.

`rlvfast.sampler.fast_trunk.FastTrunk` (decode through a KV cache, no grad) and
`rlvfast.train.forward.read_hidden` (packed rows with shared prompts, with grad) run the
same layer math, written here once: RMSNorm (`rms_norm`), the rotary embedding (`rotate`),
the fused q/k/v split into heads with Qwen3's per-head q/k RMSNorm where the model has one
(`split_heads`), grouped-query attention through SDPA (`attention`), the SiLU-gated MLP and
one layer's fused weights (`FusedLayer`), and the set of models this math reproduces
(`supports`; `unsupported_reason` says why a model is refused, `warn_unsupported` says it once).
It is the math of the Hugging Face modules it reads, op for op, so results match theirs up to
float rounding.

Not here: caches, packing, prefix sharing or which positions are computed (the two callers),
the LM head and the losses.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlvfast.models.lora import linear_weight, lora_reason

_SUPPORTED = {"llama", "qwen2", "qwen3"}
_LAYER_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_PARTS = ("gate_proj", "up_proj", "down_proj")


def supports(model: torch.nn.Module) -> bool:
    """A Llama/Qwen2/Qwen3 trunk this math reproduces (see `unsupported_reason`)."""
    return unsupported_reason(model) is None


def warn_unsupported(model: torch.nn.Module, path: str, reason: str | None = None) -> bool:
    """`supports(model)` (False too when the caller gives its own `reason`); when refused, ONE
    warning per reason and caller (`path`, e.g. "the sampler's fast trunk") naming the
    model_type and the reason: that path runs HF's forward instead."""
    reason = reason or unsupported_reason(model)
    if reason is not None:
        model_type = getattr(model.config, "model_type", None)
        warnings.warn(f"rlvfast: {path} does not support model_type {model_type!r} ({reason}); "
                      f"using the Hugging Face forward", stacklevel=2)
    return reason is None


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """None for a trunk this math reproduces: Llama, Qwen2 or Qwen3, SiLU MLP without bias, full
    attention (no sliding window), no bias on o_proj, per-head q/k norms or none, no
    tensor-parallel split of the weights; else what is not reproduced, in a few words."""
    config, trunk = model.config, getattr(model, "base_model", None)
    if getattr(config, "model_type", None) not in _SUPPORTED:
        return f"only {sorted(_SUPPORTED)} are"
    if trunk is model or trunk is None or not all(hasattr(trunk, a) for a in ("embed_tokens", "rotary_emb",
                                                                               "norm", "layers")):
        return "no decoder trunk with embed_tokens, rotary_emb, norm and layers"
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act={getattr(config, 'hidden_act', None)!r}, only 'silu' is"
    if getattr(config, "mlp_bias", False):
        return "mlp_bias=True"
    layer_types = getattr(config, "layer_types", None) or ()
    if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        return "sliding-window attention"
    if getattr(config, "pretraining_tp", 1) != 1:
        return f"pretraining_tp={config.pretraining_tp}"
    return next(filter(None, map(_layer_reason, trunk.layers)), None)


def _layer_reason(layer: torch.nn.Module) -> str | None:
    """What in one decoder layer this math does not reproduce, or None."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or any(not hasattr(attn, p) for p in _LAYER_PARTS):
        return "a layer without self_attn.{q,k,v,o}_proj"
    if any(not hasattr(mlp, p) for p in _MLP_PARTS) or getattr(attn.o_proj, "bias", None) is not None:
        return "a layer without a gated MLP, or with a bias on o_proj"
    norms = [getattr(attn, n, None) for n in ("q_norm", "k_norm")]
    if any(n is not None for n in norms) and not all(_is_head_norm(n, attn) for n in norms):
        return "q/k norms other than an RMSNorm per head"
    modules = [getattr(attn, p) for p in _LAYER_PARTS] + [getattr(mlp, p) for p in _MLP_PARTS]
    return next(filter(None, map(lora_reason, modules)), None)


def _is_head_norm(norm: torch.nn.Module | None, attn: torch.nn.Module) -> bool:
    """An RMSNorm (weight, variance_epsilon) over one head's head_dim, as Qwen3's q_norm/k_norm."""
    weight = getattr(norm, "weight", None)
    return (weight is not None and hasattr(norm, "variance_epsilon")
            and tuple(weight.shape) == (getattr(attn, "head_dim", None),))


@dataclass(frozen=True, slots=True)
class HeadShape:
    """Attention head counts and size: nh query heads share nkv key/value heads (GQA)."""
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config) -> HeadShape:
        num_heads = config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
        return cls(num_heads, num_kv_heads, getattr(config, "head_dim", None) or config.hidden_size // num_heads)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # The HF LlamaRMSNorm math, op for op (float32 statistics).
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (HF's rotate_half form) of x (..., hd) with cos/sin broadcast to it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def to_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """(B, T, n hd) -> (B, n, T, hd), a view."""
    return x.view(x.shape[0], x.shape[1], num_heads, head_dim).transpose(1, 2)


def split_heads(qkv: torch.Tensor, layer: FusedLayer, cos: torch.Tensor, sin: torch.Tensor):
    """(B, T, (nh + 2 nkv) hd) -> q (B, nh, T, hd), k and v (B, nkv, T, hd); q and k normed per
    head where the layer has q/k norms (Qwen3), then rotated with cos/sin (B, 1, T, hd)."""
    nh, nkv, hd = layer.shape.num_heads, layer.shape.num_kv_heads, layer.shape.head_dim
    q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q, k = layer.norm_q(to_heads(q, nh, hd)), layer.norm_k(to_heads(k, nkv, hd))
    return rotate(q, cos, sin), rotate(k, cos, sin), to_heads(v, nkv, hd)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """Grouped-query attention: q (B, nh, Tq, hd), k/v (B, nkv, S, hd) with nh a multiple of
    nkv, mask (B, 1, Tq, S) (additive or bool; None: causal) -> (B, Tq, nh hd), before o_proj."""
    rows, nh, num_q, hd = q.shape
    nkv = k.shape[1]
    rep = nh // nkv
    if num_q == 1 and rep > 1 and mask is not None:
        # One query (a decode step): the rep query heads of a kv head attend as rep "tokens",
        # so the shared keys/values are never copied rep times.
        out = F.scaled_dot_product_attention(q.reshape(rows, nkv, rep, hd), k, v, attn_mask=mask,
                                             scale=scale)  # (B, nkv, rep, hd)
        return out.reshape(rows, 1, nh * hd)
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                         scale=scale)  # (B, nh, Tq, hd)
    return out.transpose(1, 2).reshape(rows, num_q, nh * hd)


def _norm_parts(norm: torch.nn.Module | None) -> tuple[torch.Tensor, float] | None:
    """(weight, eps) of an RMSNorm module, None for no module."""
    return None if norm is None else (norm.weight, norm.variance_epsilon)


class FusedLayer:
    """One decoder layer's weights with q/k/v and gate/up concatenated, its norms (the per-head
    q/k norms too where the model has them, Qwen3) and head shape: 7 matmuls become 4. A peft
    LoRA layer contributes its adapted weight (`rlvfast.models.lora.linear_weight`). Built
    under no_grad (the sampler, rebuilt every generate()) they are plain copies; built with
    grad enabled (the trainer, every forward) the concatenation is in the graph, so gradients
    reach the model's own parameters."""

    def __init__(self, layer: torch.nn.Module, shape: HeadShape) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.shape = shape
        (q, q_bias), (k, k_bias), (v, v_bias) = (linear_weight(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        self.qkv = torch.cat([q, k, v])  # ((nh + 2 nkv) hd, H)
        self.qkv_bias = None if q_bias is None else torch.cat([q_bias, k_bias, v_bias])
        self.num_q_rows = q.shape[0]
        self.o = linear_weight(attn.o_proj)[0]  # (H, nh hd)
        self.gate_up = torch.cat([linear_weight(mlp.gate_proj)[0], linear_weight(mlp.up_proj)[0]])  # (2 I, H)
        self.down = linear_weight(mlp.down_proj)[0]  # (H, I)
        self.scaling = attn.scaling
        self.norm_in = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.norm_post = (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        self.q_norm, self.k_norm = (_norm_parts(getattr(attn, n, None)) for n in ("q_norm", "k_norm"))

    def norm_q(self, q: torch.Tensor) -> torch.Tensor:
        """Qwen3's per-head RMSNorm of q (..., hd) before RoPE; q itself without one."""
        return q if self.q_norm is None else rms_norm(q, *self.q_norm)

    def norm_k(self, k: torch.Tensor) -> torch.Tensor:
        """Qwen3's per-head RMSNorm of k (..., hd) before RoPE; k itself without one."""
        return k if self.k_norm is None else rms_norm(k, *self.k_norm)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., (nh + 2 nkv) hd): the fused q/k/v projection of the normed input."""
        return F.linear(rms_norm(h, *self.norm_in), self.qkv, self.qkv_bias)

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
