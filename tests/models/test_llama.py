"""The decoder math the sampler and the trainer share (`rlvfast.models.llama`): grouped-query
attention against an explicit softmax reference on the shapes that hit each of its paths,
and both forwards running this one copy."""
import math

import pytest
import torch

from rlvfast.models import llama
from rlvfast.train import forward as train_forward
from rlvfast.models.llama import attention
from rlvfast.sampler import fast_trunk


def reference_attention(q, k, v, allowed):
    """softmax(q k^T * scale) v with the kv heads repeated, allowed (B, 1, Tq, S) bool -> (B, Tq, nh hd)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    out = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v  # (B, nh, Tq, hd)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


@pytest.mark.parametrize("num_heads,num_kv_heads,num_q,mask_kind", [
    (6, 2, 1, "additive"),  # a decode step with GQA: the one-query path (3 query heads as 3 tokens)
    (4, 4, 1, "additive"),  # a decode step without GQA
    (6, 3, 5, "bool"),      # several queries with GQA under an explicit mask (trainer suffixes, verify)
    (6, 2, 5, "causal"),    # mask None: causal (the trainer's prefix pass)
])
def test_attention_matches_the_explicit_softmax(num_heads, num_kv_heads, num_q, mask_kind):
    g = torch.Generator().manual_seed(0)
    rows, keys, hd = 3, 7 if mask_kind != "causal" else num_q, 8
    q = torch.randn(rows, num_heads, num_q, hd, generator=g, dtype=torch.float64)
    k = torch.randn(rows, num_kv_heads, keys, hd, generator=g, dtype=torch.float64)
    v = torch.randn(rows, num_kv_heads, keys, hd, generator=g, dtype=torch.float64)
    if mask_kind == "causal":
        allowed = torch.ones(num_q, keys, dtype=torch.bool).tril().expand(rows, 1, num_q, keys)
        mask = None
    else:  # ragged rows: row r sees keys from r on (a left-padded batch), each query one more key
        cols = torch.arange(keys)
        allowed = ((cols[None, :] >= torch.arange(rows)[:, None])[:, None, None, :]
                   & (cols[None, :] <= keys - num_q + torch.arange(num_q)[:, None]))  # (B, 1, Tq, S)
        mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(
            ~allowed, torch.finfo(q.dtype).min)
    got = attention(q, k, v, mask, 1 / math.sqrt(hd))
    assert got.shape == (rows, num_q, num_heads * hd)
    torch.testing.assert_close(got, reference_attention(q, k, v, allowed), atol=1e-12, rtol=1e-12)


def test_sampler_and_trainer_run_the_one_copy_of_the_math():
    for name in ("attention", "split_heads", "rms_norm", "FusedLayer"):
        assert getattr(fast_trunk, name) is getattr(llama, name)
        assert getattr(train_forward, name) is getattr(llama, name)
