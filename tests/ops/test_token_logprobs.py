"""token_logprobs on every backend for the test device (conftest.py) against the float64 reference.

Forward values and gradients (random upstream gradients for both logprobs and lse) at
shapes that hit each code path of the chunked kernels; the chunk size is shrunk to 4 rows
so "exactly one chunk" and "one past it" stay cheap.
"""
import pytest
import torch

import rlvfast.ops as ops
from conftest import CPU_ONLY, TEST_DEVICE, device_backends
from dtype_tolerances import LOW_PRECISION, assert_fp32_accurate, assert_rounded_once
from rlvfast.ops import reference
from rlvfast.ops.cpp import FusedConfig

CHUNK = 4  # rows per logit chunk in these tests (the kernels default to ~128 MiB of logits)


def _run(backend: str, hidden, weight, targets, temperature):
    """The backend's token_logprobs with the test chunk size."""
    if backend == "cpp":
        from rlvfast.ops import cpp
        return cpp.token_logprobs(hidden, weight, targets, FusedConfig(temperature=temperature, chunk_rows=CHUNK))
    if backend == "triton":
        from rlvfast.kernels.token_logprobs import token_logprobs
        return token_logprobs(hidden, weight, targets, temperature, chunk_rows=CHUNK)
    return reference.token_logprobs(hidden, weight, targets, temperature)


BACKENDS = device_backends("token_logprobs")

KERNELS = [b for b in BACKENDS if b != "reference"]  # the reference itself is the spec

# (N, H, V, temperature): the code path each one hits
SHAPES = [
    (1, 97, 1031, 1.0),       # N = 1 (a single partial chunk), odd H and V
    (CHUNK, 97, 1031, 0.7),   # exactly one chunk, temperature 0.7
    (CHUNK + 1, 64, 1031, 1.0),  # one past the chunk boundary
    (2 * CHUNK + 3, 33, 517, 0.7),  # several chunks, the last one partial
    (3, 32, 49153, 1.0),      # V not a multiple of any power-of-two block
    (2, 16, 151936, 0.7),     # Qwen2 vocabulary at small N
]


def _inputs(n, h, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * (2.0 / h ** 0.5)  # logits ~ N(0, 4)
    targets = torch.randint(0, v, (n,), generator=g)
    grad_lp = torch.randn(n, generator=g, dtype=torch.float64)
    grad_lse = torch.randn(n, generator=g, dtype=torch.float64)
    on_device = [t.to(TEST_DEVICE) for t in (targets, grad_lp, grad_lse)]
    return (hidden.to(TEST_DEVICE, dtype), weight.to(TEST_DEVICE, dtype), *on_device)


def _forward_backward(backend, hidden, weight, targets, grad_lp, grad_lse, temperature):
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    logprobs, lse = _run(backend, hidden, weight, targets, temperature)
    (logprobs.double() * grad_lp + lse.double() * grad_lse).sum().backward()
    return logprobs, lse, hidden.grad, weight.grad


# float64 inputs: the kernels compute in float64, so only summation order differs, except
# that Triton takes 1/T as a float32 runtime scalar (6e-8 relative): 1e-6 covers logits
# up to ~15 and still fails on any real error.
# float32 inputs: logits ~ N(0, 4) summed over H <= 97 terms and a softmax over V <= 151936
# in float32 give relative errors ~1e-6; 1e-4 leaves a 100x margin and still catches a
# wrong term (errors of a missing 1/T or a dropped row are O(1)).
# Large vocabularies run in float32 only (the float64 path is the same code).
TOLERANCES = [(torch.float64, 1e-6, 1e-6), (torch.float32, 1e-4, 1e-4)]
CASES = [(*shape, *tol) for shape in SHAPES for tol in TOLERANCES if shape[2] < 10000 or tol[0] == torch.float32]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("n,h,v,temperature,dtype,atol,rtol", CASES)
def test_matches_float64_reference(backend, n, h, v, temperature, dtype, atol, rtol):
    hidden, weight, targets, grad_lp, grad_lse = _inputs(n, h, v, dtype)
    want = _forward_backward("reference", hidden.double(), weight.double(), targets, grad_lp, grad_lse, temperature)
    got = _forward_backward(backend, hidden, weight, targets, grad_lp, grad_lse, temperature)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert got[0].dtype == expected_dtype and got[1].dtype == expected_dtype
    assert got[2].dtype == dtype and got[3].dtype == dtype  # gradients in the input dtype
    for name, g, w in zip(("logprobs", "lse", "grad_hidden", "grad_weight"), got, want):
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


# bf16/fp16 inputs, every backend (the reference too) against the float64 reference on the same
# rounded values: fp32 outputs to fp32 accuracy, gradients rounded once to the input dtype
# (dtype_tolerances.py argues both). 11 rows = 3 chunks, so grad_weight sums across chunks.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_inputs_against_float64_reference(backend, dtype):
    hidden, weight, targets, grad_lp, grad_lse = _inputs(2 * CHUNK + 3, 97, 1031, dtype, seed=3)
    want = _forward_backward("reference", hidden.double(), weight.double(), targets, grad_lp, grad_lse, 0.7)
    got = _forward_backward(backend, hidden, weight, targets, grad_lp, grad_lse, 0.7)
    for name, g, w in zip(("logprobs", "lse"), got, want):
        assert_fp32_accurate(g, w, name)
    for name, g, w in zip(("grad_hidden", "grad_weight"), got[2:], want[2:]):
        assert_rounded_once(g, w, dtype, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_dispatch_matches_reference(backend):
    hidden, weight, targets, *_ = _inputs(5, 24, 300, torch.float64, seed=1)
    got = ops.token_logprobs(hidden, weight, targets, 0.7, backend=backend)
    want = reference.token_logprobs(hidden, weight, targets, 0.7)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)  # float64; see the note above


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprobs_sum_to_one_over_the_vocabulary(backend):
    # one row scored against every token: checks the lse independently of the reference
    hidden, weight, *_ = _inputs(1, 16, 50, torch.float64, seed=2)
    logprobs, _ = ops.token_logprobs(hidden.expand(50, -1).contiguous(), weight, torch.arange(50, device=TEST_DEVICE),
                                     backend=backend)
    assert abs(logprobs.exp().sum().item() - 1.0) < 1e-12


@pytest.mark.parametrize("bad,match", [
    (dict(targets=torch.tensor([0, 50, 1])), "target id at index 1 is 50"),
    (dict(targets=torch.tensor([0, 1, -2])), "target id at index 2 is -2"),
    (dict(targets=torch.tensor([0.0, 1.0, 2.0])), "targets must be int64"),
    (dict(temperature=0.0), "temperature must be a finite number > 0, got 0.0"),
    (dict(hidden=torch.randn(3, 7, dtype=torch.float64)), "hidden H=7 does not match weight H=8"),
    (dict(hidden=torch.randn(3, dtype=torch.float64)), "hidden must be 2-D"),
    pytest.param(dict(backend="cuda"), "backend 'cuda' is not available for cpu tensors", marks=CPU_ONLY),
    (dict(backend="fast"), "backend must be one of"),
])
def test_bad_inputs_name_the_value(bad, match):
    args = dict(hidden=torch.randn(3, 8, dtype=torch.float64), weight=torch.randn(50, 8, dtype=torch.float64),
                targets=torch.tensor([0, 1, 2]), temperature=1.0, backend="auto")
    args.update(bad)
    args = {k: v.to(TEST_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        ops.token_logprobs(**args)
