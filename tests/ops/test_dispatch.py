"""backend="auto": which backend runs for CPU and CUDA tensors, with the availability faked.

No GPU here, so the CUDA decisions are checked with rlvfast._ext's answers monkeypatched; the
rule itself is rlvfast.ops.auto_backend, a pure function of (op, device type, usable backends).
"""
import pytest
import torch

import rlvfast.ops as ops
from conftest import CPU_ONLY
from rlvfast import _ext
from rlvfast.ops import reference

LM_HEAD_OPS = ("token_logprobs", "policy_loss", "verifier_scores")


@pytest.mark.parametrize("op, device_type, usable, expected", [
    ("group_advantages", "cuda", ["reference", "triton", "cuda"], "triton"),  # the CUDA op is never auto
    ("group_advantages", "cuda", ["reference", "cuda"], "reference"),  # not even without Triton
    ("token_logprobs", "cuda", ["reference", "triton"], "triton"),
    ("policy_loss", "cuda", ["reference"], "reference"),  # no Triton installed
    ("verifier_scores", "cpu", ["reference", "cpp", "triton"], "cpp"),  # the interpreter is never auto
    ("policy_loss", "cpu", ["reference", "triton"], "reference"),  # no rlvfast._C, interpreter on
    ("group_advantages", "cpu", ["reference", "cpp"], "cpp"),
    ("token_logprobs", "mps", ["reference"], "reference"),  # any other device
])
def test_auto_backend_rule(op, device_type, usable, expected):
    assert ops.auto_backend(op, device_type, usable) == expected


@pytest.fixture
def gpu_machine_without_cpp(monkeypatch):
    """Answers as on a GPU machine where rlvfast._C built only its CUDA op and Triton is installed."""
    monkeypatch.setattr(_ext, "has_cpp", lambda: False)
    monkeypatch.setattr(_ext, "triton_usable", lambda device: device.type == "cuda")
    monkeypatch.setattr(_ext, "has_cuda_ops", lambda: True)


def test_cuda_tensors_get_triton_and_cpu_tensors_the_reference(gpu_machine_without_cpp):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert ops.available_backends(cuda) == ["reference", "triton", "cuda"]
    assert ops.available_backends(cpu) == ["reference"]
    for op in ops.OP_BACKENDS:
        assert ops.resolve_backend("auto", cuda, op) == "triton"
        assert ops.resolve_backend("auto", cpu, op) == "reference"
    assert ops.resolve_backend("cuda", cuda, "group_advantages") == "cuda"  # asked for: it runs


@pytest.mark.parametrize("op", LM_HEAD_OPS)
def test_forcing_cuda_on_an_lm_head_op_names_the_missing_kernel(gpu_machine_without_cpp, op):
    with pytest.raises(ValueError, match=f"{op}: backend 'cuda' has no kernel for this op; use one of "
                                         "reference, cpp, triton"):
        ops.resolve_backend("cuda", torch.device("cuda"), op)


@CPU_ONLY
def test_auto_runs_the_reference_when_cpp_is_missing(gpu_machine_without_cpp):
    # end to end on CPU tensors: auto lands on the reference and gives its numbers
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(20, 8, generator=g,
                                                                                       dtype=torch.float64)
    targets = torch.tensor([1, 5, 19])
    got = ops.token_logprobs(hidden, weight, targets)
    torch.testing.assert_close(got, reference.token_logprobs(hidden, weight, targets), rtol=0, atol=0)
    with pytest.raises(ValueError, match="backend 'cpp' is not available for cpu tensors here"):
        ops.token_logprobs(hidden, weight, targets, backend="cpp")
