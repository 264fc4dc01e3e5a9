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

Each decoder layer runs as one step over both streams (the prefixes, then the suffixes that
attend to them), so under FSDP2 (`rlvfast.train.distributed.unit_call`) every unit is
gathered once in the forward and once in the backward, as HF's own forward would have it.

`read_plan` turns the loss's rows (`rlvfast.train.loss.RowBatch`) into `read_hidden`'s arguments
and the rows re-indexed into its output.

Not here: the loss (`rlvfast.train.loss`), the optimizer, and any model `supports` refuses
(another architecture, biased o_proj/MLP, a sliding window, attention dropout; one warning
names the model_type and why): those use the HF trunk.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from rlvfast.models import llama
from rlvfast.models.llama import FusedLayer, HeadShape, attention, rms_norm, split_heads
from rlvfast.train.distributed import unit_call
from rlvfast.train.loss import RowBatch


def supports(model: torch.nn.Module) -> bool:
    """A Llama-family trunk this forward reproduces (`llama.supports`, no attention dropout);
    one warning per reason when the trainer falls back to HF's padded forward."""
    dropout = getattr(model.config, "attention_dropout", 0.0)
    return llama.warn_unsupported(model, "the trainer's packed forward",
                                  f"attention_dropout={dropout}" if dropout else None)


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


@dataclass(slots=True)
class _Packing:
    """Where read_hidden's tokens go: the distinct prefixes run once, the suffixes packed."""
    cut: torch.Tensor            # (B,) each row's shared prefix length
    group: torch.Tensor          # (B,) each row's prefix, an index into prefix_ids
    prefix_ids: torch.Tensor     # (U, P) the distinct prefixes, right-padded (P may be 0)
    suffix_ids: torch.Tensor     # (B, S) row b from its cut on, right-padded
    real: torch.Tensor           # (Ntok,) the real suffix tokens, flat into B*S
    read_suffix: torch.Tensor    # (M,) the read positions, flat into B*S
    read_packed: torch.Tensor    # (M,) the read positions, into the Ntok packed tokens


def _pack(input_ids: torch.Tensor, lengths: Sequence[int], prefix_lengths: list[int],
          read_index: torch.Tensor) -> _Packing:
    rows, width = input_ids.shape
    device = input_ids.device
    cut = torch.tensor(prefix_lengths, device=device)  # (B,)
    prefixes, group = _group_prefixes(input_ids, prefix_lengths)
    p_width = max(len(p) for p in prefixes)
    prefix_ids = torch.zeros(len(prefixes), p_width, dtype=torch.long, device=device)  # (U, P) right-padded
    for u, ids in enumerate(prefixes):
        prefix_ids[u, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    s_width = max(int(n) - c for n, c in zip(lengths, prefix_lengths))
    # suffix rows: row b from its cut on, right-padded; read positions move with them
    cols = (cut[:, None] + torch.arange(s_width, device=device)).clamp(max=width - 1)  # (B, S)
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
    return _Packing(cut, torch.tensor(group, device=device), prefix_ids, input_ids.gather(1, cols), real,
                    read_suffix, read_packed)


def _embed(trunk: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """Token embeddings of `ids` and the rotary (cos, sin) (B, 1, T, hd) at `positions` (B, T)."""
    h = trunk.embed_tokens(ids)
    cos, sin = (x[:, None] for x in trunk.rotary_emb(h, positions))
    return h, (cos, sin)


def _prefix_layer(h: torch.Tensor, layer: FusedLayer, rope: tuple, is_last: bool):
    """One layer on the distinct prefixes h (U, P, H), causally (right padding is harmless):
    (its keys/values (U, nkv, P, hd), the next hidden states; None after the last layer,
    whose output no one reads)."""
    q, k, v = split_heads(layer.project(h), layer, *rope)
    if is_last:
        return (k, v), None
    h = h + F.linear(attention(q, k, v, None, layer.scaling), layer.o)
    return (k, v), layer.mlp_block(h)


def _suffix_mask(cut: torch.Tensor, p_width: int, s_width: int) -> torch.Tensor | None:
    """(B, 1, S, P + S) bool: each suffix token sees its own prefix (up to its cut) and the
    suffix causally; None (plain causal) when there is no prefix."""
    if p_width == 0:
        return None
    rows, device = cut.shape[0], cut.device
    causal = torch.ones(s_width, s_width, dtype=torch.bool, device=device).tril()  # (S, S)
    in_prefix = torch.arange(p_width, device=device)[None, :] < cut[:, None]  # (B, P)
    return torch.cat([in_prefix[:, None, :].expand(rows, s_width, p_width),
                      causal.expand(rows, s_width, s_width)], dim=-1)[:, None]


@dataclass(slots=True)
class _Trunk:
    """What each layer step reads besides the hidden states."""
    pack: _Packing
    shape: HeadShape
    prefix_rope: tuple | None    # (cos, sin) (U, 1, P, hd); None without prefixes
    rope: tuple                  # (cos, sin) (B, 1, S, hd) of the suffixes
    mask: torch.Tensor | None    # (B, 1, S, P + S) `_suffix_mask`
    last: torch.nn.Module        # the last decoder layer: only the read rows leave it
    checkpoint: bool


def read_hidden(model: torch.nn.Module, input_ids: torch.Tensor, lengths: Sequence[int],
                prefix_lengths: Sequence[int], read_index: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """Final-norm hidden states (M, H) at flat positions `read_index` (M,) of the right-padded
    rows input_ids (B, T) with `lengths` real tokens each. Row b's first prefix_lengths[b]
    tokens may be shared with other rows; every read position must lie at or after it.
    `checkpoint`: each suffix layer but the last is recomputed in the backward instead of
    keeping its activations (`--gradient-checkpointing`; the same values and gradients).
    FSDP2-sharded (`distributed.register_unit_calls`): the whole runs as a call of the root
    unit and each layer step as a call of its layer's unit, so FSDP2 gathers each unit's
    weights around the math that reads them and reduce-scatters their gradients; the root
    stays unsharded after it, for the loss's lm head, as after the root's own forward."""
    pack = _pack(input_ids, lengths, [int(n) for n in prefix_lengths], read_index)
    return unit_call(model, _trunk, model, pack, checkpoint)  # (M, H)


def _trunk(model: torch.nn.Module, pack: _Packing, checkpoint: bool) -> torch.Tensor:
    """read_hidden's forward: both streams through every layer step, then the final norm."""
    trunk = model.base_model
    (num_prefixes, p_width), s_width = pack.prefix_ids.shape, pack.suffix_ids.shape[1]
    prefix, prefix_rope = None, None
    if p_width > 0:
        prefix, prefix_rope = _embed(trunk, pack.prefix_ids, torch.arange(p_width, device=pack.cut.device)
                                     .expand(num_prefixes, p_width))  # (U, P, H)
    suffix, rope = _embed(trunk, pack.suffix_ids.reshape(-1).index_select(0, pack.real),
                          pack.cut[:, None] + torch.arange(s_width, device=pack.cut.device))  # (Ntok, H)
    ctx = _Trunk(pack, HeadShape.from_config(model.config), prefix_rope, rope, _suffix_mask(pack.cut, p_width, s_width),
                 trunk.layers[-1], checkpoint)
    hidden = (prefix, suffix)
    for layer in trunk.layers:
        hidden = unit_call(layer, _layer_step, ctx, layer, hidden)
    return rms_norm(hidden[1], trunk.norm.weight, trunk.norm.variance_epsilon)  # (M, H)


def _layer_step(ctx: _Trunk, module: torch.nn.Module, hidden: tuple) -> tuple:
    """One decoder layer on (prefixes (U, P, H) or None, packed suffixes (Ntok, H)): the
    prefixes' keys/values, then the suffixes attend to [own prefix (masked to its length),
    suffix causally]. After the last layer: (None, the read rows (M, H))."""
    layer, (prefix, suffix) = FusedLayer(module, ctx.shape), hidden
    is_last = module is ctx.last
    with _fused_weights_rebuilt(layer, module):
        prefix_kv = None
        if prefix is not None:
            prefix_kv, prefix = _prefix_layer(prefix, layer, ctx.prefix_rope, is_last)
        rest = (ctx.pack, prefix_kv, ctx.rope, ctx.mask)
        if is_last:
            return None, _last_layer(suffix, layer, *rest)  # (M, H)
        if ctx.checkpoint:  # fused weights of its own, rebuilt in the recompute: a checkpoint keeps its arguments
            return prefix, torch.utils.checkpoint.checkpoint(_rebuilt_suffix_layer, module, ctx.shape, suffix, *rest,
                                                             use_reentrant=False)
        return prefix, _suffix_layer(suffix, layer, *rest)  # (Ntok, H)


def _fused_weights_rebuilt(layer: FusedLayer, module: torch.nn.Module):
    """Autograd keeps no copy of `layer`'s concatenated weights (q/k/v, gate/up) for the
    backward: a saved view of one is stored as its place and re-concatenated from `module`'s
    parameters when the backward reads it (bit-equal: the parameters have not changed; under
    FSDP2 they are regathered by then). So a layer's fused copies live only during its call,
    like the parameters FSDP2 frees after it. These hooks hide the layer's saved tensors from
    any outer `saved_tensors_hooks` (rlvfast has none)."""
    fused = {t.untyped_storage().data_ptr(): name for name, t in (("qkv", layer.qkv), ("gate_up", layer.gate_up))}
    shape = layer.shape  # the hooks live as long as the saved tensors: they must not hold `layer`

    def pack(t: torch.Tensor):
        name = fused.get(t.untyped_storage().data_ptr())
        return t if name is None else (name, t.size(), t.stride(), t.storage_offset())

    def unpack(saved):
        if isinstance(saved, torch.Tensor):
            return saved
        name, size, stride, offset = saved
        with torch.no_grad():
            return getattr(FusedLayer(module, shape), name).as_strided(size, stride, offset)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _suffix_attention(h: torch.Tensor, layer: FusedLayer, pack: _Packing, prefix_kv, rope, mask) -> torch.Tensor:
    """One layer's attention output (B*S, nh hd) for the packed suffix tokens h (Ntok, H)."""
    rows, s_width = pack.suffix_ids.shape
    qkv = layer.project(h)  # (Ntok, (nh + 2 nkv) hd)
    qkv = qkv.new_zeros(rows * s_width, qkv.shape[-1]).index_copy(0, pack.real, qkv)  # (B*S, ...) zero-padded
    q, k, v = split_heads(qkv.view(rows, s_width, -1), layer, *rope)
    if prefix_kv is not None:
        pk, pv = prefix_kv
        k = torch.cat([pk.index_select(0, pack.group), k], dim=2)  # (B, nkv, P + S, hd)
        v = torch.cat([pv.index_select(0, pack.group), v], dim=2)
    return attention(q, k, v, mask, layer.scaling).reshape(rows * s_width, -1)  # (B*S, nh hd)


def _suffix_layer(h: torch.Tensor, layer: FusedLayer, pack: _Packing, prefix_kv, rope, mask) -> torch.Tensor:
    """One whole layer on the packed suffix tokens: (Ntok, H) -> (Ntok, H)."""
    out = _suffix_attention(h, layer, pack, prefix_kv, rope, mask)  # (B*S, nh hd)
    return layer.mlp_block(h + F.linear(out.index_select(0, pack.real), layer.o))  # (Ntok, H)


def _rebuilt_suffix_layer(module: torch.nn.Module, shape: HeadShape, h: torch.Tensor, *args) -> torch.Tensor:
    """`_suffix_layer` on fused weights of its own, so that a checkpoint of it keeps no fused
    copy for the backward (it rebuilds them in its recompute)."""
    return _suffix_layer(h, FusedLayer(module, shape), *args)


def _last_layer(h: torch.Tensor, layer: FusedLayer, pack: _Packing, prefix_kv, rope, mask) -> torch.Tensor:
    """The last layer: attention over every suffix token, the rest only at the read rows: (M, H)."""
    out = _suffix_attention(h, layer, pack, prefix_kv, rope, mask)  # (B*S, nh hd)
    attended = F.linear(out.index_select(0, pack.read_suffix), layer.o)  # (M, H)
    return layer.mlp_block(h.index_select(0, pack.read_packed) + attended)


def read_plan(rows: RowBatch, prefix_lengths: list[int]) -> tuple[tuple, RowBatch]:
    """(read_hidden's arguments after the ids, the rows re-indexed into its compact output): the
    loss reads the policy positions then the verifier positions; `prefix_lengths[b]`: row b's
    shareable prefix (for a rollout, its prompt but the last token, which predicts the first
    sampled token)."""
    num_policy, num_rows = rows.policy_index.numel(), rows.verifier_index.numel()
    read = torch.cat([rows.policy_index, rows.verifier_index])  # (N + B,)
    lengths = rows.attention_mask.sum(dim=1).tolist()
    compact = replace(rows, policy_index=torch.arange(num_policy, device=read.device),
                      verifier_index=torch.arange(num_policy, num_policy + num_rows, device=read.device))
    return (lengths, prefix_lengths, read), compact
