"""`read_hidden`: the trainer's differentiable forward of a Llama-family trunk, computing only
what the loss reads.

    read_hidden(model, input_ids, lengths, prefix_lengths, read_index)
        == model.model(input_ids, attention_mask).last_hidden_state.reshape(-1, H)[read_index]

for right-padded rows, up to float rounding, gradients included. Four savings over the plain
padded forward, all exact in math:
- shared prefixes: rows whose first `prefix_lengths[b]` tokens are equal (the G samples of a
  GRPO group share their prompt) run that prefix ONCE; every row's suffix attends to its
  prefix's keys/values, gathered, so the gradients of all rows sum into the one prefix pass
  (by causality the prefix does not depend on what follows it);
- the last layer runs its output projection, MLP and final norm only at the positions the
  loss reads (the prefix pass needs only that layer's keys/values);
- norms, projections and the MLP run on the real tokens only (packed: no padding), the
  attention on the padded rows;
- q/k/v and gate/up are one matmul each, on weights concatenated in the graph every call
  (so gradients flow to the model's own parameters), with no per-module dispatch.
Same math as the HF modules: RMSNorm statistics in float32, the model's rotary embedding
(positions continue across prefix and suffix), SDPA, SiLU-gated MLP, GQA.

Not here: the loss (`rlvfast.rl_loss`), the optimizer, and any model `supports` refuses
(another architecture, biased o_proj/MLP, attention dropout, q/k norms): those use the HF
trunk.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rlvfast.sampler.fast_trunk import FastTrunk, FusedLayer, rms_norm, rotate


def supports(model: torch.nn.Module) -> bool:
    """A Llama-family trunk this forward reproduces (the sampler's FastTrunk set, no dropout)."""
    return FastTrunk.supports(model) and not getattr(model.config, "attention_dropout", 0.0)


class _Shapes:
    def __init__(self, model: torch.nn.Module) -> None:
        config = model.config
        self.nh = config.num_attention_heads
        self.nkv = getattr(config, "num_key_value_heads", None) or self.nh
        self.hd = getattr(config, "head_dim", None) or config.hidden_size // self.nh

    @staticmethod
    def project(layer: FusedLayer, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., (nh + 2 nkv) hd): the fused q/k/v projection of the normed input."""
        return F.linear(rms_norm(h, *layer.norm_in), layer.qkv, layer.qkv_bias)

    def heads(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """(B, T, (nh + 2 nkv) hd) -> q (B, nh, T, hd), k and v (B, nkv, T, hd), q and k rotated."""
        rows, width = qkv.shape[:2]
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = rotate(q.view(rows, width, self.nh, self.hd).transpose(1, 2), cos, sin)
        k = rotate(k.view(rows, width, self.nkv, self.hd).transpose(1, 2), cos, sin)
        return q, k, v.view(rows, width, self.nkv, self.hd).transpose(1, 2)

    def attend(self, layer: FusedLayer, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """-> attention output before o_proj, (B, T, nh hd); mask None means causal."""
        if self.nkv != self.nh:
            rep = self.nh // self.nkv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             scale=layer.scaling)  # (B, nh, T, hd)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.nh * self.hd)


def _group_prefixes(input_ids: torch.Tensor, prefix_lengths: Sequence[int]) -> tuple[list[list[int]], list[int]]:
    """Distinct prefixes (in order of first appearance) and each row's index into them."""
    index: dict[tuple[int, ...], int] = {}
    prefixes, group = [], []
    for b, n in enumerate(prefix_lengths):
        key = tuple(input_ids[b, :n].tolist())
        if key not in index:
            index[key] = len(prefixes)
            prefixes.append(list(key))
        group.append(index[key])
    return prefixes, group


def read_hidden(model: torch.nn.Module, input_ids: torch.Tensor, lengths: Sequence[int],
                prefix_lengths: Sequence[int], read_index: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states (M, H) at flat positions `read_index` (M,) of the right-padded
    rows input_ids (B, T) with `lengths` real tokens each. Row b's first prefix_lengths[b]
    tokens may be shared with other rows; every read position must lie at or after it."""
    trunk = model.base_model
    shapes = _Shapes(model)
    rows, width = input_ids.shape
    device = input_ids.device
    prefix_lengths = [int(n) for n in prefix_lengths]
    cut = torch.tensor(prefix_lengths, device=device)  # (B,)
    prefixes, group = _group_prefixes(input_ids, prefix_lengths)
    group_t = torch.tensor(group, device=device)  # (B,)
    p_width = max(len(p) for p in prefixes)
    s_width = max(int(n) - c for n, c in zip(lengths, prefix_lengths))
    # suffix rows: row b from its cut on, right-padded; read positions move with them
    cols = (cut[:, None] + torch.arange(s_width, device=device)).clamp(max=width - 1)  # (B, S)
    suffix_ids = input_ids.gather(1, cols)  # (B, S)
    read_row, read_col = read_index // width, read_index % width
    if bool((read_col < cut[read_row]).any()):
        raise ValueError("read_hidden: a read position lies inside its row's shared prefix")
    read_suffix = read_row * s_width + (read_col - cut[read_row])  # (M,) into B*S
    # per-token work (norms, projections, MLP) runs on the real suffix tokens only, packed
    suffix_lengths = torch.tensor([int(n) - c for n, c in zip(lengths, prefix_lengths)], device=device)  # (B,)
    is_real = (torch.arange(s_width, device=device)[None, :] < suffix_lengths[:, None]).reshape(-1)  # (B*S,)
    real = is_real.nonzero().squeeze(1)  # (Ntok,) into B*S
    packed_of = torch.full((rows * s_width,), -1, dtype=torch.long, device=device)
    packed_of[real] = torch.arange(real.numel(), device=device)
    read_packed = packed_of[read_suffix]  # (M,) into Ntok
    if bool((read_packed < 0).any()):
        raise ValueError("read_hidden: a read position lies past its row's length")

    layers = [FusedLayer(layer) for layer in trunk.layers]
    last = len(layers) - 1
    rotary = trunk.rotary_emb

    # ---- the distinct prefixes, once each: keys/values of every layer (the last layer's output is never read)
    prefix_kv = []
    if p_width > 0:
        p_ids = torch.zeros(len(prefixes), p_width, dtype=torch.long, device=device)  # (U, P) right-padded
        for u, ids in enumerate(prefixes):
            p_ids[u, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        h = trunk.embed_tokens(p_ids)  # (U, P, H)
        positions = torch.arange(p_width, device=device).expand(len(prefixes), p_width)  # (U, P)
        cos, sin = (x[:, None] for x in rotary(h, positions))  # (U, 1, P, hd)
        for i, layer in enumerate(layers):
            q, k, v = shapes.heads(shapes.project(layer, h), cos, sin)
            prefix_kv.append((k, v))
            if i < last:
                h = h + F.linear(shapes.attend(layer, q, k, v, None), layer.o)  # causal; right padding is harmless
                h = layer.mlp_block(h)

    # ---- the suffixes: attend to [own prefix (masked to its length), suffix causally]
    h = trunk.embed_tokens(suffix_ids.reshape(-1).index_select(0, real))  # (Ntok, H)
    positions = cut[:, None] + torch.arange(s_width, device=device)  # (B, S)
    cos, sin = (x[:, None] for x in rotary(h, positions))  # (B, 1, S, hd)
    causal = torch.ones(s_width, s_width, dtype=torch.bool, device=device).tril()  # (S, S)
    if p_width > 0:
        in_prefix = torch.arange(p_width, device=device)[None, :] < cut[:, None]  # (B, P)
        mask = torch.cat([in_prefix[:, None, :].expand(rows, s_width, p_width),
                          causal.expand(rows, s_width, s_width)], dim=-1)[:, None]  # (B, 1, S, P + S)
    else:
        mask = None
    for i, layer in enumerate(layers):
        qkv = shapes.project(layer, h)  # (Ntok, (nh + 2 nkv) hd)
        qkv = qkv.new_zeros(rows * s_width, qkv.shape[-1]).index_copy(0, real, qkv)  # (B*S, ...) zero-padded
        q, k, v = shapes.heads(qkv.view(rows, s_width, -1), cos, sin)
        if p_width > 0:
            pk, pv = prefix_kv[i]
            k = torch.cat([pk.index_select(0, group_t), k], dim=2)  # (B, nkv, P + S, hd)
            v = torch.cat([pv.index_select(0, group_t), v], dim=2)
        out = shapes.attend(layer, q, k, v, mask).reshape(rows * s_width, -1)  # (B*S, nh hd)
        if i < last:
            h = layer.mlp_block(h + F.linear(out.index_select(0, real), layer.o))  # (Ntok, H)
        else:  # only the rows the loss reads
            h = layer.mlp_block(h.index_select(0, read_packed) + F.linear(out.index_select(0, read_suffix), layer.o))
    return rms_norm(h, trunk.norm.weight, trunk.norm.variance_epsilon)  # (M, H)
