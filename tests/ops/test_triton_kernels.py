"""Triton kernels (rlvfast.kernels) against the float64 spec in rlvfast.ops.reference.

Inputs on the test device (conftest.py's TEST_DEVICE): on cpu the kernels run through the Triton
interpreter (conftest sets TRITON_INTERPRET=1), on cuda compiled; shapes are small either way,
and each case names the code path it hits. fp64 inputs are compared at
1e-9. Runtime scalars enter the kernels as fp32 (never constexpr), so a temperature or
clip value that fp32 cannot hold exactly (0.7, 0.2) moves fp64 results by ~1e-8 relative:
those cases, the fp32 ones and the bf16 ones (fp32 accumulation of bf16 products) use
fp32-level tolerances; the exact fp64 cases use T = 1 and clips 0.25 / 0.375.
"""
import pytest
import torch

pytest.importorskip("triton")

from rlvfast.kernels.group_advantages import group_advantages  # noqa: E402
from rlvfast.kernels.policy_loss import policy_loss  # noqa: E402
from rlvfast.kernels.token_logprobs import CHUNK_ELEMS, chunk_rows_for, token_logprobs  # noqa: E402
from rlvfast.kernels.verifier_scores import MAX_CHUNK_COLS, chunk_cols_for, verifier_scores  # noqa: E402
from conftest import TEST_DEVICE  # noqa: E402
from rlvfast.ops import reference  # noqa: E402

F64 = torch.float64


def tolerances(dtype: torch.dtype, *scalars: float) -> dict:
    """Tolerance for a comparison of dtype results computed with these runtime scalars."""
    if dtype == F64 and all(torch.tensor(x, dtype=torch.float32).item() == x for x in scalars):
        return dict(rtol=1e-9, atol=1e-9)
    if dtype == torch.bfloat16:  # grads come back in bf16
        return dict(rtol=1e-2, atol=1e-2)
    return dict(rtol=2e-5, atol=2e-5)


def lm_head(num_rows: int, hidden_size: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_rows, hidden_size, generator=gen, dtype=F64)
    weight = torch.randn(vocab, hidden_size, generator=gen, dtype=F64) / hidden_size**0.25
    targets = torch.randint(0, vocab, (num_rows,), generator=gen)
    return (hidden.to(TEST_DEVICE, dtype).requires_grad_(), weight.to(TEST_DEVICE, dtype).requires_grad_(),
            targets.to(TEST_DEVICE))


def assert_close(actual, expected, tol):
    torch.testing.assert_close(actual.to(expected.dtype), expected, **tol)


# (N, H, V, temperature, chunk_rows, dtype): the code path each hits
LM_HEAD_CASES = [
    pytest.param(1, 16, 37, 1.0, None, F64, id="N=1, V below one block (masked tail), one chunk"),
    pytest.param(5, 97, 300, 0.7, 2, F64, id="H odd, chunks 2+2+1 (one past the chunk size), T=0.7"),
    pytest.param(9, 32, 5000, 1.0, 4, torch.float32, id="fp32, two 4096 blocks + masked tail, chunks 4+4+1"),
    pytest.param(3, 8, 49153, 1.0, 2, F64, id="V=49153: 13 blocks, partial last; chunks 2+1"),
    pytest.param(4, 32, 300, 1.0, 3, torch.bfloat16, id="bf16 inputs, fp32 outputs and grad_W accumulator"),
]


@pytest.mark.parametrize("num_rows, hidden_size, vocab, temperature, chunk_rows, dtype", LM_HEAD_CASES)
def test_token_logprobs_matches_reference(num_rows, hidden_size, vocab, temperature, chunk_rows, dtype):
    hidden, weight, targets = lm_head(num_rows, hidden_size, vocab, dtype)
    logprobs, lse = token_logprobs(hidden, weight, targets, temperature, chunk_rows=chunk_rows)
    ref_logprobs, ref_lse = reference.token_logprobs(hidden, weight, targets, temperature)
    assert logprobs.dtype == lse.dtype == ref_logprobs.dtype
    out_tol = tolerances(F64 if dtype == F64 else torch.float32, temperature)
    assert_close(logprobs, ref_logprobs, out_tol)
    assert_close(lse, ref_lse, out_tol)

    gen = torch.Generator().manual_seed(1)  # random upstream grads for both outputs
    g_lp, g_lse = torch.randn(2, num_rows, generator=gen, dtype=F64).to(TEST_DEVICE, logprobs.dtype)
    grads = torch.autograd.grad((logprobs * g_lp + lse * g_lse).sum(), (hidden, weight))
    ref_grads = torch.autograd.grad((ref_logprobs * g_lp + ref_lse * g_lse).sum(), (hidden, weight))
    for grad, ref_grad, x in zip(grads, ref_grads, (hidden, weight)):
        assert grad.dtype == x.dtype and grad.shape == x.shape
        assert_close(grad, ref_grad, tolerances(dtype, temperature))


@pytest.mark.parametrize("num_rows, vocab", [(16384, 151936), (1, 151936), (7, 37), (200_000, 50)])
def test_default_chunks_never_hold_all_logits(num_rows, vocab):
    # the memory promise: one [rows, V] chunk of at most CHUNK_ELEMS (or a single row)
    rows = chunk_rows_for(num_rows, vocab, None)
    assert 1 <= rows <= num_rows and (rows * vocab <= CHUNK_ELEMS or rows == 1)
    if num_rows * vocab > CHUNK_ELEMS:
        assert rows < num_rows
    cols = chunk_cols_for(num_rows, vocab, None)  # verifier: chunks over the vocabulary
    assert 1 <= cols <= min(vocab, MAX_CHUNK_COLS)


def test_only_block_sizes_and_dtypes_are_compile_time():
    # temperature, clips, eps, method must be runtime args: a constexpr would recompile per value
    import inspect

    from rlvfast.kernels import group_advantages as ga, policy_loss as pl, token_logprobs as tlp
    from rlvfast.kernels import verifier_scores as vs
    kernels = [tlp._logprobs_fwd_kernel, tlp._logprobs_bwd_kernel, pl._policy_loss_kernel,
               vs._lse_update_kernel, vs._verifier_bwd_kernel, ga._group_advantages_kernel]
    for kernel in kernels:
        fn = getattr(kernel, "fn", kernel)
        params = inspect.signature(fn).parameters
        constexprs = {name for name, p in params.items() if "constexpr" in str(p.annotation)}
        assert constexprs and constexprs <= {"BLOCK_V", "BLOCK", "ACC", "HAS_GRAD"}, (fn.__name__, constexprs)


def test_token_logprobs_grad_of_logprobs_only():
    # upstream grad only on logprobs (lse unused): the backward must treat g_lse as 0
    hidden, weight, targets = lm_head(3, 16, 37, F64)
    (g_h,) = torch.autograd.grad(token_logprobs(hidden, weight, targets)[0].sum(), (hidden,))
    (ref_g_h,) = torch.autograd.grad(reference.token_logprobs(hidden, weight, targets)[0].sum(), (hidden,))
    assert_close(g_h, ref_g_h, tolerances(F64))


# Per row: log-ratio lp - old and advantage sign; with clips 0.2 / 0.28 (asymmetric band
# [0.8, 1.28]) or 0.25 / 0.375 (band [0.75, 1.375]) these hit: in band (both signs), above the band (A>0 clipped, A<0 not),
# below the band (A<0 clipped, A>0 not), A = 0, and a zero weight.
LOG_RATIOS = [0.0, 0.1, -0.1, 0.5, 0.5, -0.5, -0.5, 1.0, -1.0, 0.05, 0.2, -0.3]
ADVANTAGES = [1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 0.0, -2.0, 0.5, 2.0, -0.5]


def policy_inputs(num_rows: int, hidden, weight, targets, temperature: float):
    with torch.no_grad():
        logprobs, _ = reference.token_logprobs(hidden, weight, targets, temperature)
    log_ratio = torch.tensor(LOG_RATIOS, dtype=logprobs.dtype, device=TEST_DEVICE).repeat(2)[:num_rows]
    advantages = torch.tensor(ADVANTAGES, dtype=logprobs.dtype, device=TEST_DEVICE).repeat(2)[:num_rows]
    weights = torch.linspace(0.0, 1.0, num_rows, dtype=logprobs.dtype, device=TEST_DEVICE)  # row 0 has weight 0
    return logprobs - log_ratio, advantages, weights


EXACT_CLIPS = (0.25, 0.375)  # fp32 holds them exactly
POLICY_CASES = [
    pytest.param(1, 16, 37, 1.0, EXACT_CLIPS, None, F64, id="N=1 (weight 0 row), single block"),
    pytest.param(12, 97, 37, 0.7, (0.2, 0.28), 5, F64, id="every clip case, H odd, chunks 5+5+2, T=0.7"),
    pytest.param(12, 16, 5000, 1.0, EXACT_CLIPS, 11, F64, id="every clip case, two blocks + tail, chunks 11+1"),
    pytest.param(2, 8, 49153, 1.0, EXACT_CLIPS, 1, F64, id="V=49153, chunk of 1 row"),
    pytest.param(12, 32, 300, 0.7, (0.2, 0.28), 5, torch.bfloat16, id="bf16 inputs, T=0.7"),
]


@pytest.mark.parametrize("num_rows, hidden_size, vocab, temperature, clips, chunk_rows, dtype", POLICY_CASES)
def test_policy_loss_matches_reference(num_rows, hidden_size, vocab, temperature, clips, chunk_rows, dtype):
    hidden, weight, targets = lm_head(num_rows, hidden_size, vocab, dtype, seed=2)
    old, advantages, weights = policy_inputs(num_rows, hidden, weight, targets, temperature)
    loss, logprobs = policy_loss(hidden, weight, targets, old, advantages, weights, *clips, temperature,
                                 chunk_rows=chunk_rows)
    ref_loss, ref_logprobs = reference.policy_loss(hidden, weight, targets, old, advantages, weights,
                                                   *clips, temperature)
    assert not logprobs.requires_grad and loss.dtype == ref_loss.dtype
    out_tol = tolerances(F64 if dtype == F64 else torch.float32, temperature, *clips)
    assert_close(loss, ref_loss, out_tol)
    assert_close(logprobs, ref_logprobs, out_tol)

    g_loss = torch.tensor(-1.7, dtype=loss.dtype, device=TEST_DEVICE)  # a non-unit upstream grad
    grads = torch.autograd.grad(loss * g_loss, (hidden, weight))
    ref_grads = torch.autograd.grad(ref_loss * g_loss, (hidden, weight))
    for grad, ref_grad in zip(grads, ref_grads):
        assert grad.abs().max() > 0 or num_rows == 1
        assert_close(grad, ref_grad, tolerances(dtype, temperature, *clips))


def test_policy_loss_clipped_rows_get_no_gradient():
    # Only clipped rows (A>0 above the band, A<0 below it): the loss has no gradient at all.
    hidden, weight, targets = lm_head(2, 16, 37, F64)
    with torch.no_grad():
        logprobs, _ = reference.token_logprobs(hidden, weight, targets)
    old = logprobs - torch.tensor([0.5, -0.5], dtype=F64, device=TEST_DEVICE)  # ratios e^0.5 and e^-0.5
    advantages = torch.tensor([1.0, -1.0], dtype=F64, device=TEST_DEVICE)
    loss, _ = policy_loss(hidden, weight, targets, old, advantages, torch.ones(2, dtype=F64, device=TEST_DEVICE),
                          *EXACT_CLIPS)
    assert loss.item() == pytest.approx(-(1.375 * 1.0 + 0.75 * -1.0), rel=1e-12)
    g_h, g_w = torch.autograd.grad(loss, (hidden, weight))
    assert g_h.abs().max() == 0 and g_w.abs().max() == 0


def test_policy_loss_without_grad_matches():
    # no input needs grad: the kernel's loss-only path (no gradient pass, no GEMMs for grads)
    hidden, weight, targets = lm_head(5, 16, 300, F64)
    old, advantages, weights = policy_inputs(5, hidden, weight, targets, 1.0)
    with torch.no_grad():
        loss, logprobs = policy_loss(hidden, weight, targets, old, advantages, weights, *EXACT_CLIPS,
                                     chunk_rows=2)
        ref_loss, ref_logprobs = reference.policy_loss(hidden, weight, targets, old, advantages, weights,
                                                       *EXACT_CLIPS)
    assert not loss.requires_grad
    assert_close(loss, ref_loss, tolerances(F64))
    assert_close(logprobs, ref_logprobs, tolerances(F64))


# (B, H, V, temperature, chunk_cols, dtype, yes_id, no_id)
VERIFIER_CASES = [
    pytest.param(1, 16, 37, 1.0, None, F64, 3, 36, id="B=1, one chunk, masked tail, no id = last"),
    pytest.param(4, 97, 37, 0.7, 10, F64, 0, 12, id="H odd, vocab chunks 10+10+10+7, T=0.7"),
    pytest.param(3, 8, 1000, 1.0, 300, F64, 599, 601, id="ids in the middle chunk of 300+300+300+100"),
    pytest.param(3, 8, 49153, 1.0, None, torch.float32, 5, 49152, id="V=49153: default chunks of 32768 + tail"),
]


@pytest.mark.parametrize("rows, hidden_size, vocab, temperature, chunk_cols, dtype, yes_id, no_id",
                         VERIFIER_CASES)
def test_verifier_scores_matches_reference(rows, hidden_size, vocab, temperature, chunk_cols, dtype,
                                           yes_id, no_id):
    hidden, weight, _ = lm_head(rows, hidden_size, vocab, dtype, seed=3)
    with torch.no_grad():  # make "Yes" likely so p_yes is not vanishingly small
        weight[yes_id] = 3 * hidden[0] / hidden_size**0.5
    p_yes, p_no = verifier_scores(hidden, weight, yes_id, no_id, temperature, chunk_cols=chunk_cols)
    ref_yes, ref_no = reference.verifier_scores(hidden, weight, yes_id, no_id, temperature)
    assert p_yes.shape == p_no.shape == (rows,) and p_yes.dtype == ref_yes.dtype
    assert ref_yes[0] > 1e-3
    tol = tolerances(dtype, temperature)
    assert_close(p_yes, ref_yes, tol)
    assert_close(p_no, ref_no, tol)

    gen = torch.Generator().manual_seed(4)
    g_yes, g_no = torch.randn(2, rows, generator=gen, dtype=F64).to(TEST_DEVICE, p_yes.dtype)
    grads = torch.autograd.grad((p_yes * g_yes + p_no * g_no).sum(), (hidden, weight))
    ref_grads = torch.autograd.grad((ref_yes * g_yes + ref_no * g_no).sum(), (hidden, weight))
    for grad, ref_grad in zip(grads, ref_grads):
        assert_close(grad, ref_grad, tol)


@pytest.mark.parametrize("method", ["grpo", "rloo", "drgrpo"])
@pytest.mark.parametrize("group_size", [1, 4, 5])  # 5: a group that does not fill its power-of-2 block
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_group_advantages_matches_reference(method, group_size, dtype):
    gen = torch.Generator().manual_seed(group_size)
    num_groups = 6
    rewards = (torch.rand(num_groups * group_size, generator=gen) > 0.5).to(dtype)  # 0/1 rewards
    rewards[:group_size] = 1.0  # an all-correct group
    rewards[group_size:2 * group_size] = 0.0  # an all-wrong group
    rewards[2 * group_size:3 * group_size] = torch.randn(group_size, generator=gen).to(dtype)  # real-valued
    rewards = rewards.to(TEST_DEVICE)
    out = group_advantages(rewards, group_size, method)
    expected = reference.group_advantages(rewards, group_size, method)
    assert out.dtype == dtype and out.shape == rewards.shape
    torch.testing.assert_close(out, expected, rtol=1e-12 if dtype == F64 else 1e-6, atol=1e-12 if dtype == F64 else 1e-6)
    assert out[:2 * group_size].abs().max() == 0  # all-equal groups give 0
    if group_size > 1:
        assert out[2 * group_size:3 * group_size].abs().max() > 0


def test_group_advantages_values_by_hand():
    # group [1, 0, 0, 0]: mean 1/4, unbiased std 1/2
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64, device=TEST_DEVICE)
    torch.testing.assert_close(group_advantages(rewards, 4, "grpo", eps=0.0).cpu(),
                               torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=F64))
    torch.testing.assert_close(group_advantages(rewards, 4, "rloo").cpu(),
                               torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3], dtype=F64))
    torch.testing.assert_close(group_advantages(rewards, 4, "drgrpo").cpu(),
                               torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=F64))
