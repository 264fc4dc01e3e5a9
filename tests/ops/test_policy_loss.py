"""policy_loss on every backend for the test device (conftest.py) against the float64 reference.

Old log-probs are built as logprobs - offset so each token's ratio r = exp(offset) lands
where we want it: inside the clip band, below it, or above it, with advantages of both
signs, so every branch of the clipped loss and of its gradient is hit. Chunk size 4 rows.
"""
import math

import pytest
import torch

import rlvfast.ops as ops
from conftest import CPU_ONLY, TEST_DEVICE, device_backends, peak_rss_of
from dtype_tolerances import LOW_PRECISION, assert_fp32_accurate, assert_rounded_once
from rlvfast.ops import reference
from rlvfast.ops.cpp import FusedConfig, TokenBatch

CHUNK = 4
CLIP_LOW, CLIP_HIGH = 0.2, 0.28  # asymmetric (DAPO-style) so low/high mix-ups fail


BACKENDS = device_backends("policy_loss")
KERNELS = [b for b in BACKENDS if b != "reference"]


def _run(backend, hidden, weight, targets, old, adv, weights, temperature):
    if backend == "cpp":
        from rlvfast.ops import cpp
        cfg = FusedConfig(temperature=temperature, clip_low=CLIP_LOW, clip_high=CLIP_HIGH, chunk_rows=CHUNK)
        return cpp.policy_loss(hidden, weight, TokenBatch(targets, old, adv, weights), cfg)
    if backend == "triton":
        from rlvfast.kernels.policy_loss import policy_loss
        return policy_loss(hidden, weight, targets, old, adv, weights, CLIP_LOW, CLIP_HIGH, temperature,
                           chunk_rows=CHUNK)
    return reference.policy_loss(hidden, weight, targets, old, adv, weights, CLIP_LOW, CLIP_HIGH, temperature)


# ratio placements (log of r): in band, below 1 - clip_low, above 1 + clip_high, all away
# from the band edges so float32 rounding cannot move a token across one.
LOG_RATIOS = [math.log(0.95), math.log(1.1), math.log(0.6), math.log(1.5), 0.0]


def _inputs(n, h, v, dtype, temperature, seed=0, weights=None):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * (2.0 / h ** 0.5)
    targets = torch.randint(0, v, (n,), generator=g)
    logprobs, _ = reference.token_logprobs(hidden, weight, targets, temperature)  # (N,)
    log_ratio = torch.tensor([LOG_RATIOS[i % len(LOG_RATIOS)] for i in range(n)], dtype=torch.float64)
    old = logprobs - log_ratio  # ratio exp(logprobs - old) = exp(log_ratio)
    adv = torch.randn(n, generator=g, dtype=torch.float64).abs() + 0.1
    adv = adv * torch.tensor([1.0 if (i // len(LOG_RATIOS)) % 2 == 0 else -1.0 for i in range(n)],
                             dtype=torch.float64)  # each ratio placement with both signs
    if weights is None:
        weights = torch.rand(n, generator=g, dtype=torch.float64)
        weights[1::3] = 0.0  # masked-out tokens
    on_device = [t.to(TEST_DEVICE) for t in (targets, old, adv, weights)]
    return (hidden.to(TEST_DEVICE, dtype), weight.to(TEST_DEVICE, dtype), *on_device)


def _forward_backward(backend, hidden, weight, targets, old, adv, weights, temperature):
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    loss, logprobs = _run(backend, hidden, weight, targets, old, adv, weights, temperature)
    assert not logprobs.requires_grad
    upstream = 0.37  # a non-unit upstream gradient: the backward must scale by it
    (loss * upstream).backward()
    return loss, logprobs, hidden.grad, weight.grad


SHAPES = [
    (1, 97, 1031, 1.0),           # N = 1
    (CHUNK, 97, 1031, 0.7),       # exactly one chunk
    (CHUNK + 1, 64, 1031, 1.0),   # one past the chunk
    (2 * CHUNK + 2, 33, 517, 0.7),  # 10 tokens: every ratio placement with both advantage signs
    (3, 32, 49153, 1.0),          # V not a multiple of a power-of-two block
    (2, 16, 151936, 0.7),         # the full Qwen2 vocabulary at small N
]
# float64: same math, only summation order differs (Triton's float32 1/T: 6e-8 relative).
# float32: ~1e-6 relative error in logprobs -> ratios -> loss and gradients; 1e-4 margin.
TOLERANCES = [(torch.float64, 1e-6, 1e-6), (torch.float32, 1e-4, 1e-4)]
CASES = [(*shape, *tol) for shape in SHAPES for tol in TOLERANCES if shape[2] < 10000 or tol[0] == torch.float32]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("n,h,v,temperature,dtype,atol,rtol", CASES)
def test_matches_float64_reference(backend, n, h, v, temperature, dtype, atol, rtol):
    hidden, weight, targets, old, adv, weights = _inputs(n, h, v, dtype, temperature)
    want = _forward_backward("reference", hidden.double(), weight.double(), targets, old, adv, weights, temperature)
    got = _forward_backward(backend, hidden, weight, targets, old.to(dtype), adv.to(dtype), weights.to(dtype),
                            temperature)
    assert got[0].dim() == 0 and got[1].shape == (n,)
    assert got[2].dtype == dtype and got[3].dtype == dtype
    for name, g, w in zip(("loss", "logprobs", "grad_hidden", "grad_weight"), got, want):
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def test_gradient_is_zero_exactly_where_the_clip_is_active():
    # The 10-token case places every ratio with both advantage signs; the per-token gradient
    # of -min(rA, clip(r)A) is zero for (A > 0, r above the band) and (A < 0, r below it).
    n, h, v = 10, 8, 64
    hidden, weight, targets, old, adv, _ = _inputs(n, h, v, torch.float64, 1.0,
                                                   weights=torch.ones(n, dtype=torch.float64))
    for backend in BACKENDS:
        rows = []
        for i in range(n):  # one token at a time: grad_hidden row i is that token's gradient
            one = [t[i:i + 1] for t in (hidden, targets, old, adv)]
            _, _, grad_h, _ = _forward_backward(backend, one[0], weight, one[1], one[2], one[3],
                                                torch.ones(1, dtype=torch.float64, device=TEST_DEVICE), 1.0)
            rows.append(grad_h.abs().sum().item())
        ratio = [math.exp(LOG_RATIOS[i % 5]) for i in range(n)]
        clipped = [(adv[i] > 0 and ratio[i] > 1 + CLIP_HIGH) or (adv[i] < 0 and ratio[i] < 1 - CLIP_LOW)
                   for i in range(n)]
        assert sum(clipped) == 2  # r = 1.5 with A > 0, r = 0.6 with A < 0
        for i in range(n):
            assert (rows[i] == 0.0) == clipped[i], (backend, i, rows[i], ratio[i], adv[i].item())


@pytest.mark.parametrize("backend", KERNELS)
def test_all_zero_weights_give_zero_loss_and_gradients(backend):
    n = CHUNK + 1
    hidden, weight, targets, old, adv, weights = _inputs(n, 16, 200, torch.float32, 1.0,
                                                         weights=torch.zeros(n, dtype=torch.float64))
    loss, logprobs, grad_h, grad_w = _forward_backward(backend, hidden, weight, targets, old.float(), adv.float(),
                                                       weights.float(), 1.0)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad_h) == 0 and torch.count_nonzero(grad_w) == 0
    want, _ = reference.token_logprobs(hidden.double(), weight.double(), targets)
    torch.testing.assert_close(logprobs.double(), want, atol=1e-4, rtol=1e-4)  # log-probs still computed


# bf16/fp16 hidden and weight (per-token inputs in fp32, as the trainer passes them), every
# backend (the reference too) against the float64 reference on the same rounded values: loss
# and log-probs to fp32 accuracy, gradients rounded once to the input dtype (dtype_tolerances.py).
# 10 tokens: every ratio placement with both advantage signs, 3 chunks.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_inputs_against_float64_reference(backend, dtype):
    hidden, weight, targets, old, adv, weights = _inputs(2 * CHUNK + 2, 97, 1031, dtype, 0.7, seed=5)
    want = _forward_backward("reference", hidden.double(), weight.double(), targets, old, adv, weights, 0.7)
    got = _forward_backward(backend, hidden, weight, targets, old.float(), adv.float(), weights.float(), 0.7)
    for name, g, w in zip(("loss", "logprobs"), got, want):
        assert_fp32_accurate(g, w, name)
    for name, g, w in zip(("grad_hidden", "grad_weight"), got[2:], want[2:]):
        assert_rounded_once(g, w, dtype, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_dispatch_and_no_grad(backend):
    hidden, weight, targets, old, adv, weights = _inputs(6, 24, 300, torch.float64, 0.7, seed=1)
    want, want_lp = reference.policy_loss(hidden, weight, targets, old, adv, weights, CLIP_LOW, CLIP_HIGH, 0.7)
    got, got_lp = ops.policy_loss(hidden, weight, targets, old, adv, weights, CLIP_LOW, CLIP_HIGH, 0.7,
                                  backend=backend)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_lp, want_lp, atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # the loss-only path (no gradient epilogue) gives the same loss
        again, _ = ops.policy_loss(hidden.requires_grad_(True), weight, targets, old, adv, weights,
                                   CLIP_LOW, CLIP_HIGH, 0.7, backend=backend)
    assert not again.requires_grad
    torch.testing.assert_close(again, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bad,match", [
    (dict(targets=torch.tensor([0, 1, 99])), "target id at index 2 is 99"),
    (dict(old_logprobs=torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64)), "old_logprobs at index 1 is nan"),
    (dict(advantages=torch.tensor([0.0, 1.0, float("inf")], dtype=torch.float64)), "advantages at index 2 is inf"),
    (dict(weights=torch.ones(4, dtype=torch.float64)), r"weights must be \[N=3\], got shape \(4,\)"),
    (dict(clip_low=-0.1), "clip_low must be a finite number >= 0, got -0.1"),
    (dict(clip_high=float("nan")), "clip_high must be a finite number >= 0, got nan"),
    (dict(temperature=-1.0), "temperature must be a finite number > 0, got -1.0"),
    pytest.param(dict(backend="cuda"), "backend 'cuda' is not available for cpu tensors", marks=CPU_ONLY),
    (dict(loss_type="grpo"), "loss_type must be one of ppo, gspo, cispo, got 'grpo'"),
    (dict(loss_type="gspo"), r"loss_type='gspo' needs segment_ids \[N=3\]"),
    (dict(loss_type="gspo", segment_ids=torch.tensor([0, 1])), r"segment_ids must be \[N=3\], got shape \(2,\)"),
    (dict(loss_type="gspo", segment_ids=torch.tensor([0.0, 1.0, 1.0])), "segment_ids must be int64"),
    (dict(loss_type="gspo", segment_ids=torch.tensor([0, -1, 1])), "segment id at index 1 is -1"),
    (dict(delta=1.1), r"delta must be a finite number > 1 \+ clip_high = 1.2 .*got 1.1"),
    (dict(loss_type="cispo", delta=3.0), "cispo has no use for it"),
])
def test_bad_inputs_name_the_value(bad, match):
    args = dict(hidden=torch.randn(3, 8, dtype=torch.float64), weight=torch.randn(50, 8, dtype=torch.float64),
                targets=torch.tensor([0, 1, 2]), old_logprobs=torch.zeros(3, dtype=torch.float64),
                advantages=torch.ones(3, dtype=torch.float64), weights=torch.ones(3, dtype=torch.float64))
    args.update(bad)
    args = {k: v.to(TEST_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        ops.policy_loss(**args)


@pytest.mark.parametrize("backend", KERNELS)
def test_backward_twice_is_a_clear_error(backend):
    # the fused kernels hand their precomputed gradients over once (no [V, H] copy kept)
    hidden, weight, targets, old, adv, weights = _inputs(3, 8, 50, torch.float64, 1.0)
    hidden.requires_grad_(True)
    loss, _ = ops.policy_loss(hidden, weight, targets, old, adv, weights, backend=backend)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


# ----------------------------------------------------------------------------- the loss family
# Hand-worked values of reference.clipped_token_loss on log-probs (the [N] head every backend
# shares), then each fused backend against the float64 reference through the lm head.
def _head(log_ratios, advantages, weights, logprobs=None, **variant):
    """(loss, d loss / d lp) of sum_i w_i l_i for tokens with lp - old = log_ratios."""
    lp = torch.tensor(logprobs or [-1.0] * len(log_ratios), dtype=torch.float64, requires_grad=True)
    old = lp.detach() - torch.tensor(log_ratios, dtype=torch.float64)
    adv = torch.tensor(advantages, dtype=torch.float64)
    losses = reference.clipped_token_loss(lp, old, adv, CLIP_LOW, CLIP_HIGH, **variant)
    loss = (torch.tensor(weights, dtype=torch.float64) * losses).sum()
    loss.backward()
    return loss.item(), lp.grad.tolist()


def test_gspo_hand_worked_sequence_ratio():
    # sequence 0: two tokens, lp - old = 0.1, 0.3 -> s0 = exp(0.2) = 1.221 (inside [0.8, 1.28]), A = +1;
    # sequence 1: one token, lp - old = -0.5 -> s1 = exp(-0.5) = 0.607 < 0.8 with A = -2: clipped,
    # l = -min(s1 A, 0.8 A) = 1.6 and no gradient. weights 0.5, 0.25, 1.0:
    # loss = -(0.5 + 0.25) s0 + 1.6; d loss / d lp_t = -(0.75) * s0 / 2 for both tokens of sequence 0
    # (each token gets its share of the sequence ratio's gradient, token 1's own ratio 1.35 is not clipped).
    loss, grad = _head([0.1, 0.3, -0.5], [1.0, 1.0, -2.0], [0.5, 0.25, 1.0], loss_type="gspo",
                       segment_ids=torch.tensor([0, 0, 1]))
    s0 = math.exp(0.2)
    assert loss == pytest.approx(-0.75 * s0 + 1.6, rel=1e-12)
    assert grad == pytest.approx([-0.75 * s0 / 2, -0.75 * s0 / 2, 0.0], rel=1e-12, abs=1e-15)
    # the token-level ratio instead: token 1 (r = exp(0.3) = 1.35 > 1.28, A > 0) is clipped
    _, token_grad = _head([0.1, 0.3, -0.5], [1.0, 1.0, -2.0], [0.5, 0.25, 1.0])
    assert token_grad == pytest.approx([-0.5 * math.exp(0.1), 0.0, 0.0], rel=1e-12, abs=1e-15)


def test_gspo_segments_need_not_be_contiguous():
    # segment ids in any order: the same sequences interleaved give the same per-token losses
    loss, grad = _head([0.1, -0.5, 0.3], [1.0, -2.0, 1.0], [0.5, 1.0, 0.25], loss_type="gspo",
                       segment_ids=torch.tensor([0, 1, 0]))
    s0 = math.exp(0.2)
    assert loss == pytest.approx(-0.75 * s0 + 1.6, rel=1e-12)
    assert grad == pytest.approx([-0.75 * s0 / 2, 0.0, -0.75 * s0 / 2], rel=1e-12, abs=1e-15)


def test_delta_caps_the_ratio_of_negative_advantages():
    # delta = 2, band [0.8, 1.28]. Token 0: r = e = 2.718, A = -1: l = -min(min(r, 2) A, 1.28 A) = 2,
    # constant in r (no gradient; without delta l = e with gradient -A r = e). Token 1: r = 1.1, A = +1:
    # l = -1.1, gradient -1.1 either way. Token 2: r = 1.5 < delta, A = -1: l = 1.5, gradient 1.5.
    log_ratios, adv, w = [1.0, math.log(1.1), math.log(1.5)], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]
    loss, grad = _head(log_ratios, adv, w, delta=2.0)
    assert loss == pytest.approx(2.0 - 1.1 + 1.5, rel=1e-12)
    assert grad == pytest.approx([0.0, -1.1, 1.5], rel=1e-12, abs=1e-15)
    loss, grad = _head(log_ratios, adv, w)
    assert loss == pytest.approx(math.e - 1.1 + 1.5, rel=1e-12)
    assert grad == pytest.approx([math.e, -1.1, 1.5], rel=1e-12)


def test_cispo_hand_worked_detached_clipped_weight():
    # l = -sg(min(r, 1 + clip_high)) A lp. Token 0: r = exp(0.1) = 1.105, A = 1, lp = -0.5:
    # l = 1.105 * 0.5 = 0.553, gradient -1.105. Token 1: r = exp(0.5) = 1.65 capped at 1.28, A = -1,
    # lp = -2: l = -1.28 * 2 = -2.56, gradient +1.28 (capped tokens keep their gradient: no min()).
    loss, grad = _head([0.1, 0.5], [1.0, -1.0], [1.0, 1.0], logprobs=[-0.5, -2.0], loss_type="cispo")
    assert loss == pytest.approx(0.5 * math.exp(0.1) - 2.56, rel=1e-12)
    assert grad == pytest.approx([-math.exp(0.1), 1.28], rel=1e-12)


VARIANTS = [  # (loss_type, delta); all use 3 sequences of lengths 4, 1 and 5 (segment ids below)
    ("gspo", None),
    ("gspo", 1.6),
    ("cispo", None),
    ("ppo", 1.4),     # the token ratio with TRL's delta: r = 1.5 with A < 0 is capped
]
SEGMENTS = [0, 0, 0, 0, 1, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("loss_type,delta", VARIANTS)
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
def test_variants_match_float64_reference(backend, loss_type, delta, dtype, atol, rtol):
    n = len(SEGMENTS)
    hidden, weight, targets, old, adv, weights = _inputs(n, 33, 517, dtype, 0.7, seed=3)
    segments = torch.tensor(SEGMENTS, device=TEST_DEVICE)
    upstream = torch.rand((), generator=torch.Generator().manual_seed(7), dtype=torch.float64).item() + 0.1

    def run(backend, hidden, weight, per_token):
        hidden = hidden.clone().requires_grad_(True)
        weight = weight.clone().requires_grad_(True)
        loss, logprobs = ops.policy_loss(hidden, weight, targets, *per_token, CLIP_LOW, CLIP_HIGH, 0.7, backend,
                                         loss_type=loss_type, delta=delta, segment_ids=segments)
        (loss * upstream).backward()
        return loss, logprobs, hidden.grad, weight.grad

    want = run("reference", hidden.double(), weight.double(), (old, adv, weights))
    got = run(backend, hidden, weight, [t.to(dtype) for t in (old, adv, weights)])
    assert got[2].dtype == dtype and got[3].dtype == dtype
    assert want[2].abs().sum() > 0  # some token has a gradient
    for name, g, w in zip(("loss", "logprobs", "grad_hidden", "grad_weight"), got, want):
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("loss_type,delta", [("cispo", None), ("ppo", 1.4)])
def test_one_pass_variants_across_chunks(backend, loss_type, delta):
    # cispo and delta are token-local: the one-pass kernels' epilogue, here over 3 chunks of 4 rows
    # (10 tokens: every ratio placement with both advantage signs)
    n = 2 * CHUNK + 2
    hidden, weight, targets, old, adv, weights = _inputs(n, 33, 517, torch.float64, 0.7, seed=4)
    is_cispo, cap = loss_type == "cispo", math.inf if delta is None else delta
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    if backend == "cpp":
        from rlvfast.ops import cpp
        cfg = FusedConfig(temperature=0.7, clip_low=CLIP_LOW, clip_high=CLIP_HIGH, chunk_rows=CHUNK, delta=cap,
                          is_cispo=is_cispo)
        loss, _ = cpp.policy_loss(hidden, weight, TokenBatch(targets, old, adv, weights), cfg)
    else:
        from rlvfast.kernels.policy_loss import policy_loss
        loss, _ = policy_loss(hidden, weight, targets, old, adv, weights, CLIP_LOW, CLIP_HIGH, 0.7,
                              chunk_rows=CHUNK, delta=cap, is_cispo=is_cispo)
    got = (loss, *torch.autograd.grad(loss, (hidden, weight)))
    want_loss, _ = reference.policy_loss(hidden, weight, targets, old, adv, weights, CLIP_LOW, CLIP_HIGH, 0.7,
                                         loss_type, delta)
    want = (want_loss, *torch.autograd.grad(want_loss, (hidden, weight)))
    for name, g, w in zip(("loss", "grad_hidden", "grad_weight"), got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6, msg=lambda m: f"{name}: {m}")


# The two-pass variants keep the fused ops' memory promise: peak resident memory of one GSPO forward +
# backward in a fresh process (as tests/ops/test_ops_memory.py measures the one-pass ops). Float32
# logits would take 512 MiB; the C++ path holds one auto-sized [chunk, V] buffer (128 MiB) plus
# grad_weight and the test's weight clone (16 MiB each); the reference, measured the same way, must
# exceed the logits' size. Measured here: cpp 144 MiB, reference 2.5 GiB.
MEM_N, MEM_H, MEM_V = 1024, 32, 131072
MEM_SCRIPT = f"""
import gc, json, torch
import rlvfast.ops as ops
torch.manual_seed(0)
N, H, V = {MEM_N}, {MEM_H}, {MEM_V}
hidden, weight = torch.randn(N, H), torch.randn(V, H) * 0.2
targets, segments = torch.randint(0, V, (N,)), torch.arange(N) // 100
per_token = (torch.full((N,), -12.0), torch.randn(N), torch.ones(N) / N)

def kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

def peak(backend):
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    base = kib("VmRSS")
    ops.policy_loss(h, w, targets, *per_token, backend=backend, loss_type="gspo", segment_ids=segments)[0].backward()
    return (kib("VmHWM") - base) * 1024

peak("cpp")  # warm-up: first-call allocations (MKL buffers, thread pools)
print(json.dumps({{"cpp": peak("cpp"), "reference": peak("reference")}}))
"""


@CPU_ONLY
@pytest.mark.skipif("cpp" not in ops.available_backends("cpu"), reason="rlvfast._C is not built")
def test_gspo_two_pass_never_holds_the_logits():
    peaks = peak_rss_of(MEM_SCRIPT, timeout=600)
    logits_bytes = MEM_N * MEM_V * 4
    mib = {k: round(v / 2**20, 1) for k, v in peaks.items()}
    assert peaks["reference"] > logits_bytes, mib  # the measurement sees [N, V]
    assert peaks["cpp"] < logits_bytes / 2, mib
