"""verifier_scores on every backend for the test device (conftest.py) against the float64 reference.

Values and gradients (random upstream gradients for p_yes and p_no) at shapes that hit
the streaming log-sum-exp: one block, a partial last block, V = 49153 and V = 151936.
The vocabulary block is shrunk so the small cases still cross block edges.
"""
import math

import pytest
import torch

import rlvfast.ops as ops
from conftest import CPU_ONLY, TEST_DEVICE, device_backends
from dtype_tolerances import LOW_PRECISION, assert_fp32_accurate, assert_rounded_once
from rlvfast.ops import reference
from rlvfast.ops.cpp import FusedConfig

BLOCK = 4096  # vocabulary columns per streaming block in these tests


BACKENDS = device_backends("verifier_scores")
KERNELS = [b for b in BACKENDS if b != "reference"]


def _run(backend, hidden, weight, yes_id, no_id, temperature):
    if backend == "cpp":
        from rlvfast.ops import cpp
        return cpp.verifier_scores(hidden, weight, yes_id, no_id, FusedConfig(temperature=temperature), BLOCK)
    if backend == "triton":
        from rlvfast.kernels.verifier_scores import verifier_scores
        return verifier_scores(hidden, weight, yes_id, no_id, temperature, chunk_cols=BLOCK)
    return reference.verifier_scores(hidden, weight, yes_id, no_id, temperature)


def _inputs(b, h, v, dtype, yes_id, no_id, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * (2.0 / h ** 0.5)
    # Make "Yes" likely for row 0 and "No" for the last row, without saturating: their
    # logits ~ log V + 1, near the log-sum-exp of the V ~ N(0, 4) others (log V + 2).
    boost = (math.log(v) + 1.0) / h
    weight[yes_id] += hidden[0] * boost
    weight[no_id] += hidden[-1] * boost
    return hidden.to(TEST_DEVICE, dtype), weight.to(TEST_DEVICE, dtype)


def _forward_backward(backend, hidden, weight, yes_id, no_id, temperature, grad_yes, grad_no):
    hidden = hidden.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    p_yes, p_no = _run(backend, hidden, weight, yes_id, no_id, temperature)
    (p_yes.double() * grad_yes + p_no.double() * grad_no).sum().backward()
    return p_yes, p_no, hidden.grad, weight.grad


# (B, H, V, yes_id, no_id, temperature): the code path each hits
SHAPES = [
    (1, 97, 1031, 5, 900, 1.0),      # B = 1, one partial block (V < BLOCK), odd H
    (3, 64, BLOCK, 0, BLOCK - 1, 0.7),  # exactly one block; ids at both ends of the vocabulary
    (2, 32, 49153, 17, 49152, 1.0),  # 12 full blocks and a partial one (49153 = 12 * 4096 + 1)
    (2, 16, 151936, 9454, 2753, 0.7),  # the Qwen2 vocabulary (Yes/No ids of Qwen2)
]


# float64: same math up to summation order: rtol 1e-6.
# float32: logits of magnitude ~15 carry ~1e-6 absolute error, so probabilities carry ~1e-6
# relative error: rtol 1e-4. Gradients: grad_hidden = G @ W sums V = 151936 float32
# products with cancellation; the plain float32 way (reference at float32) is itself off
# by 2e-4 of the largest entry at V = 151936 (measured), the C++ kernel by 4e-4: errors are
# measured against 1e-3 of the largest entry. A wrong or missing term misses by O(1).
# Triton takes 1/T as a float32 scalar, so at T != 1 its float64 path is float32-accurate.
# Large vocabularies run in float32 only (the float64 path is the same code).
TOLERANCES = [(torch.float64, 1e-6, 1e-6), (torch.float32, 1e-4, 1e-3)]  # (dtype, rtol, grad_rtol)
CASES = [(*shape, *tol) for shape in SHAPES for tol in TOLERANCES if shape[2] < 10000 or tol[0] == torch.float32]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("b,h,v,yes_id,no_id,temperature,dtype,rtol,grad_rtol", CASES)
def test_matches_float64_reference(backend, b, h, v, yes_id, no_id, temperature, dtype, rtol, grad_rtol):
    if backend == "triton" and dtype == torch.float64 and temperature != 1.0:
        rtol, grad_rtol = TOLERANCES[1][1:]
    hidden, weight = _inputs(b, h, v, dtype, yes_id, no_id)
    g = torch.Generator().manual_seed(1)
    grad_yes, grad_no = (torch.randn(b, generator=g, dtype=torch.float64).to(TEST_DEVICE) for _ in range(2))
    want = _forward_backward("reference", hidden.double(), weight.double(), yes_id, no_id, temperature, grad_yes, grad_no)
    got = _forward_backward(backend, hidden, weight, yes_id, no_id, temperature, grad_yes, grad_no)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got[2].dtype == dtype and got[3].dtype == dtype
    assert want[0][0] > 0.05 and want[1][-1] > 0.05  # the constructed rows do score high
    for name, x, y in zip(("p_yes", "p_no"), got, want):
        torch.testing.assert_close(x.double(), y, atol=1e-9, rtol=rtol, msg=lambda m: f"{name}: {m}")
    for name, x, y in zip(("grad_hidden", "grad_weight"), got[2:], want[2:]):
        scale = y.abs().max().item()  # entries near zero: error relative to the largest entry
        torch.testing.assert_close(x.double(), y, atol=grad_rtol * scale, rtol=grad_rtol, msg=lambda m: f"{name}: {m}")


# bf16/fp16 inputs, every backend (the reference too) against the float64 reference on the same
# rounded values: probabilities to fp32 accuracy, gradients rounded once to the input dtype
# (dtype_tolerances.py). V = 1031 with the test block of 4096: one partial block; the "Yes"
# row has p_yes ~ 0.5, where -a p_j and the one-hot term nearly cancel.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_inputs_against_float64_reference(backend, dtype):
    hidden, weight = _inputs(3, 97, 1031, dtype, 5, 900, seed=6)
    g = torch.Generator().manual_seed(7)
    grad_yes, grad_no = torch.randn(2, 3, generator=g, dtype=torch.float64).to(TEST_DEVICE)
    want = _forward_backward("reference", hidden.double(), weight.double(), 5, 900, 0.7, grad_yes, grad_no)
    got = _forward_backward(backend, hidden, weight, 5, 900, 0.7, grad_yes, grad_no)
    assert want[0][0] > 0.02 and want[1][-1] > 0.02  # the constructed rows do score high
    for name, x, y in zip(("p_yes", "p_no"), got, want):
        assert_fp32_accurate(x, y, name)
    for name, x, y in zip(("grad_hidden", "grad_weight"), got[2:], want[2:]):
        assert_rounded_once(x, y, dtype, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_dispatch_bf16_and_no_grad(backend):
    # bf16 inputs: the kernels upcast, so scores match the float32 reference on the same
    # rounded values to float32 accuracy (rtol 1e-4)
    hidden, weight = _inputs(4, 24, 3000, torch.bfloat16, 3, 4, seed=2)
    want = reference.verifier_scores(hidden.float(), weight.float(), 3, 4, 0.7)
    with torch.no_grad():
        got = ops.verifier_scores(hidden, weight, 3, 4, 0.7, backend=backend)
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("bad,match", [
    (dict(yes_id=50), r"yes_id=50 must be an int in \[0, V=50\)"),
    (dict(no_id=-1), r"no_id=-1 must be an int in \[0, V=50\)"),
    (dict(yes_id=1.0), r"yes_id=1.0 must be an int"),
    (dict(temperature=float("inf")), "temperature must be a finite number > 0, got inf"),
    (dict(weight=torch.randn(50, 9)), "hidden H=8 does not match weight H=9"),
    pytest.param(dict(backend="cuda"), "backend 'cuda' is not available for cpu tensors", marks=CPU_ONLY),
])
def test_bad_inputs_name_the_value(bad, match):
    args = dict(hidden=torch.randn(2, 8), weight=torch.randn(50, 8), yes_id=1, no_id=2)
    args.update(bad)
    args = {k: v.to(TEST_DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        ops.verifier_scores(**args)
