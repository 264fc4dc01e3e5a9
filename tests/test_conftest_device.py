"""RLVFAST_TEST_DEVICE=cuda plumbing of tests/conftest.py, checked without a GPU.

A child process runs pytest on tests/ops with RLVFAST_TEST_DEVICE=cuda and no CUDA device
(CUDA_VISIBLE_DEVICES="" hides one where there is), and reports what it collected, how each
test ended and whether Triton was left compiled. The op tests themselves on a real GPU are
bench/gpu's op_tests step; this checks only that they would be asked for there.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys
import pytest

class Record:
    def __init__(self):
        self.ids, self.outcomes, self.reasons = [], {}, set()

    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]

    def pytest_runtest_logreport(self, report):
        if report.when == "setup" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome
        if report.skipped:
            self.reasons.add(report.longrepr[2])

record = Record()
exit_code = pytest.main(["-q", "-p", "no:cacheprovider", "tests/ops"], plugins=[record])
import rlvfast.kernels.policy_loss as kernel
print(json.dumps({"exit_code": int(exit_code), "ids": record.ids, "outcomes": record.outcomes,
                  "reasons": sorted(record.reasons), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
                  "interpreter_imported": "triton.runtime.interpreter" in sys.modules,
                  "kernel_type": type(kernel._policy_loss_kernel).__name__}))
"""


@pytest.fixture(scope="module")
def cuda_run_without_cuda() -> dict:
    """The child's report of `pytest tests/ops` with RLVFAST_TEST_DEVICE=cuda on no CUDA device."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # this process's conftest set it
    env |= {"RLVFAST_TEST_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cuda_collects_reference_and_triton_cases_but_no_cpp(cuda_run_without_cuda):
    ids = cuda_run_without_cuda["ids"]
    for op in ("token_logprobs", "policy_loss", "verifier_scores"):
        # the kernel comparisons run Triton, the low-precision ones the reference too
        assert any(i.startswith(f"tests/ops/test_{op}.py::test_matches_float64_reference[") and i.endswith("-triton]")
                   for i in ids), op
        assert f"tests/ops/test_{op}.py::test_low_precision_inputs_against_float64_reference[dtype0-reference]" in ids
        assert not any(i.startswith(f"tests/ops/test_{op}.py::") and "cpp" in i for i in ids), op
    assert any(i.startswith("tests/ops/test_triton_kernels.py::test_policy_loss_matches_reference") for i in ids)


def test_cuda_leaves_triton_compiled(cuda_run_without_cuda):
    run = cuda_run_without_cuda
    assert run["TRITON_INTERPRET"] is None
    assert not run["interpreter_imported"]
    assert run["kernel_type"] == "JITFunction"  # under the interpreter: InterpretedFunction


def test_cuda_without_a_device_skips_every_op_test_for_one_reason(cuda_run_without_cuda):
    run = cuda_run_without_cuda
    assert run["exit_code"] == 0
    assert len(run["ids"]) > 100 and set(run["outcomes"]) == set(run["ids"])
    assert set(run["outcomes"].values()) == {"skipped"}
    assert run["reasons"] == ["Skipped: RLVFAST_TEST_DEVICE=cuda, but torch.cuda.is_available() is False "
                              "on this machine"]


@pytest.mark.parametrize("env, message", [
    ({"RLVFAST_TEST_DEVICE": "gpu"}, "RLVFAST_TEST_DEVICE='gpu': expected 'cpu' (the default) or 'cuda'"),
    ({"RLVFAST_TEST_DEVICE": "cuda", "TRITON_INTERPRET": "1"}, "but TRITON_INTERPRET=1 is set"),
])
def test_bad_device_settings_are_usage_errors(env, message):
    child_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                          "tests/ops/test_dispatch.py"], cwd=REPO, env=child_env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 4, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])  # pytest's usage error
    assert message in out.stdout + out.stderr
