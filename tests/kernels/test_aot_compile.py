"""Every Triton kernel, in every variant its launcher requests, compiles for sm_80 and sm_90 here, without a GPU.

`python -m rlvfast.kernels.aot` runs once per module in a subprocess: the tests run under
TRITON_INTERPRET=1 (conftest.py), which turns @triton.jit into the interpreter at import, so
nothing can be compiled in this process. The launch rules are checked against the pure
functions the launchers call (row_launch, group_launch). `pytest -s` prints the table of
registers, spills and shared memory. Measured here (2 shared cores): 29-60 s for 116 variants.
Skipped only where the installed triton has no NVIDIA backend.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from rlvfast.kernels import aot  # noqa: E402  (imports triton lazily: safe under the interpreter)
from rlvfast.kernels.group_advantages import group_launch  # noqa: E402
from rlvfast.kernels.token_logprobs import LmHeadOperands, row_launch  # noqa: E402
from rlvfast.kernels.verifier_scores import chunk_cols_for  # noqa: E402


def _has_nvidia_backend() -> bool:
    from triton.backends import backends
    return "nvidia" in backends


pytestmark = pytest.mark.skipif(not _has_nvidia_backend(), reason="this triton has no NVIDIA backend")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """{kernels, rows, seconds} of one AOT compile of every variant for sm_80 and sm_90."""
    work = tmp_path_factory.mktemp("aot")
    out = work / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # cwd outside the checkout: the subprocess imports the rlvfast this process imports (installed or on
    # PYTHONPATH), not ./rlvfast, which lacks rlvfast.kernels (kernels/ is mapped there at install time)
    result = subprocess.run([sys.executable, "-m", "rlvfast.kernels.aot", "--json", str(out)], cwd=work, env=env,
                            capture_output=True, text=True, timeout=900)
    assert out.exists(), f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    data = json.loads(out.read_text())
    data["rows"] = [aot.Compiled(**row) for row in data["rows"]]
    print(f"\n{aot.table(data['rows'])}\n{len(data['rows'])} variants in {data['seconds']:.1f} s")
    return data


@pytest.mark.slow  # the module's one compile (~30 s) is shared by these tests
def test_every_kernel_compiles_for_both_archs(report):
    errors = [f"sm_{r.arch} {r.kernel} [{r.variant}]: {r.error}" for r in report["rows"] if r.error]
    assert not errors, "\n".join(errors)
    names = {key.split(":")[1] for key in report["kernels"]}
    assert len(names) == 6, report["kernels"]  # a kernel without a workload would be missing below
    for arch in aot.ARCHS:
        compiled = {r.kernel for r in report["rows"] if r.arch == arch}
        assert compiled == names, (arch, names - compiled)
    for r in report["rows"]:
        assert r.registers > 0 and r.seconds > 0, r


@pytest.mark.slow
def test_no_spills_where_the_kernel_comment_says_none(report):
    promised = {r.kernel for r in report["rows"] if r.no_spills_promised}
    assert promised == {r.kernel for r in report["rows"]}  # every kernel carries the measured promise
    assert aot.problems(report["rows"]) == []


def _variants(report, kernel: str) -> list[str]:
    return [r.variant for r in report["rows"] if r.kernel == kernel and r.arch == aot.ARCHS[0]]


@pytest.mark.slow
def test_lm_head_variants_cover_every_dtype_and_launch(report):
    # the launch each V gets from the launchers' one rule, and the gradient buffer in each input
    # dtype (bf16/fp16 on a GPU: G is stored low, logits stay fp32)
    for kernel in ("_logprobs_fwd_kernel", "_logprobs_bwd_kernel", "_policy_loss_kernel"):
        for vocab in aot.VOCABS:
            launch = row_launch(vocab)
            assert any(f"BLOCK_V={launch.block_v} " in v and f"num_warps={launch.num_warps}" in v
                       for v in _variants(report, kernel)), (kernel, vocab, launch)
    for kernel in ("_logprobs_bwd_kernel", "_verifier_bwd_kernel", "_policy_loss_kernel"):
        grad_dtypes = {v.split()[1] for v in _variants(report, kernel)}  # 2nd pointer: the gradient buffer
        assert grad_dtypes == {"fp32", "bf16", "fp16", "fp64"}, (kernel, grad_dtypes)
    has_grad = {v.split("HAS_GRAD=")[1].split()[0] for v in _variants(report, "_policy_loss_kernel")}
    assert has_grad == {"True", "False"}


@pytest.mark.slow
def test_verifier_chunks_and_tails_get_their_own_block(report):
    # vocabulary chunks of chunk_cols_for(B, V) columns and a partial last one, each launched with
    # row_launch(its width): B=16384 gives 4096-column chunks, V=151936 a 384-column tail (BLOCK 512)
    expected = set()
    for rows in aot.VERIFIER_ROWS:
        for vocab in aot.VOCABS:
            step = chunk_cols_for(rows, vocab, None)
            expected |= {row_launch(width).block_v for width in (step, vocab % step) if width}
    for kernel in ("_lse_update_kernel", "_verifier_bwd_kernel"):
        blocks = {int(v.split("BLOCK_V=")[1].split()[0]) for v in _variants(report, kernel)}
        assert blocks == expected, (kernel, blocks, expected)
    assert {512, 4096} <= expected


@pytest.mark.slow
def test_group_variants_follow_the_launch_rule(report):
    variants = _variants(report, "_group_advantages_kernel")
    for group_size in aot.GROUP_SIZES:
        block, num_warps = group_launch(group_size)
        assert any(f"BLOCK={block} num_warps={num_warps}" in v for v in variants), (group_size, variants)


# ----------------------------------------------------------------------------- no compiling
PTXAS_LOG = """ptxas info    : 11 bytes gmem, 8 bytes cmem[4]
ptxas info    : Compiling entry function '_k' for 'sm_90a'
ptxas info    : Function properties for _k
    48 bytes stack frame, 40 bytes spill stores, 44 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 416 bytes cmem[0]
"""


def test_ptxas_log_parse_and_a_spill_fails():
    found = aot._parse_ptxas(PTXAS_LOG, "_k")
    assert found == dict(registers=255, stack_bytes=48, spill_stores=40, spill_loads=44, static_smem=1024)
    row = aot.Compiled(90, "_k", "fp32 | BLOCK=8", ["w"], no_spills_promised=True, **found)
    assert aot.problems([row]) == ["sm_90 _k [fp32 | BLOCK=8]: 40 B spill stores, 44 B spill loads, "
                                   "but its comment says '# no register spills'"]
    row.no_spills_promised = False  # a kernel that promises nothing may spill
    assert aot.problems([row]) == []
    with pytest.raises(RuntimeError, match="no 'Used"):
        aot._parse_ptxas("ptxas info    : Compiling entry function '_k' for 'sm_90a'\n", "_k")


def test_refuses_to_compile_under_the_interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # conftest.py
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        aot.compile_all()


def test_recording_sees_the_gpu_dtype_path_on_meta_tensors():
    # LmHeadOperands.of(on_gpu=True) keeps bf16 operands (GEMMs write fp32 logits), as on CUDA;
    # on the CPU bf16 inputs are upcast, as before
    h = torch.empty(4, 8, dtype=torch.bfloat16, device="meta")
    w = torch.empty(16, 8, dtype=torch.bfloat16, device="meta")
    gpu = LmHeadOperands.of(h, w, on_gpu=True)
    assert gpu.hidden.dtype == torch.bfloat16 and gpu.compute_dtype == torch.float32 and gpu.is_low_precision
    assert gpu.logits(slice(0, 2)).dtype == torch.float32
    assert gpu.grad_buffer(gpu.logits(slice(0, 2))).dtype == torch.bfloat16
    cpu = LmHeadOperands.of(torch.empty(4, 8, dtype=torch.bfloat16), torch.empty(16, 8, dtype=torch.bfloat16))
    assert cpu.hidden.dtype == torch.float32 and not cpu.is_low_precision
