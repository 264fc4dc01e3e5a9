"""Shared test setup: the op tests' device, Triton's CPU interpreter, shared/ paths, tiny models.

RLVFAST_TEST_DEVICE (cpu, the default, or cuda) is where tests/ops put their inputs. On cpu,
Triton runs through its CPU interpreter: TRITON_INTERPRET=1 must be set before triton is first
imported, so it is set here, at the top of the first module pytest loads. On cuda it is not
set (the compiled kernels run), and tests/ops skip, all for one reason, where no CUDA device is
present. Only tests/ops read it; run the rest of the suite with the default (without the
interpreter, tests/kernels/test_aot_compile.py's interpreter check fails).
"""
import os

TEST_DEVICE = os.environ.get("RLVFAST_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

OPS_TESTS = Path(__file__).resolve().parent / "ops"
NO_CUDA_REASON = "RLVFAST_TEST_DEVICE=cuda, but torch.cuda.is_available() is False on this machine"
CPU_ONLY = pytest.mark.skipif(TEST_DEVICE != "cpu", reason=f"CPU tensors only (RLVFAST_TEST_DEVICE={TEST_DEVICE})")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SMOLLM2_GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/, or skip the test where it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/ is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory):
    """A random 1-layer, 32-wide model directory: the trainer tests' fastest model (read only)."""
    from rlvfast.models import TinyModelConfig, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("micro") / "m",
                            TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built random tiny model directory (built once per session)."""
    from rlvfast.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from rlvfast.models import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from ../shared (about 30 s to dequantize; loaded once)."""
    from rlvfast.models import load_model

    if not SMOLLM2_GGUF.exists():
        pytest.skip(f"{SMOLLM2_GGUF} not present")
    return load_model(SMOLLM2_GGUF)


def pytest_configure(config):
    """A test device other than cpu/cuda, or cuda under the interpreter, is a usage error (exit 4)."""
    if TEST_DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"RLVFAST_TEST_DEVICE={TEST_DEVICE!r}: expected 'cpu' (the default) or 'cuda'")
    if TEST_DEVICE == "cuda" and os.environ.get("TRITON_INTERPRET") == "1":
        raise pytest.UsageError("RLVFAST_TEST_DEVICE=cuda runs the compiled Triton kernels, but TRITON_INTERPRET=1 "
                                "is set in the environment; unset it")


def pytest_collection_modifyitems(config, items):
    """CUDA asked for but absent: every tests/ops item skips, for that one reason."""
    import torch

    if TEST_DEVICE != "cuda" or torch.cuda.is_available():
        return
    skip = pytest.mark.skipif(True, reason=NO_CUDA_REASON)  # first in line: before any CPU_ONLY reason
    for item in items:
        if OPS_TESTS in Path(item.path).parents:
            item.add_marker(skip, append=False)


def device_backends(op: str) -> list[str]:
    """The backends the op tests run `op` on for TEST_DEVICE tensors, in rlvfast.ops.OP_BACKENDS
    order: on cpu the reference, C++ when built, and Triton (the interpreter); on cuda the
    reference, Triton, and the CUDA C++ op where `op` has one and it is built. Triton only when
    `rlvfast.kernels.<op>` imports."""
    import importlib

    import rlvfast.ops as ops

    usable = ops.available_backends(TEST_DEVICE)
    backends = [b for b in ops.OP_BACKENDS[op] if b in usable]
    if "triton" in backends:
        try:
            importlib.import_module(f"rlvfast.kernels.{op}")
        except ImportError:
            backends.remove("triton")
    return backends


def peak_rss_of(script: str, timeout: float) -> dict:
    """The JSON object `script` (run by `python -c` in a fresh process: a clean heap) prints on its
    last line: its peak-RSS measurements, which need Linux's /proc/self/clear_refs (else skip)."""
    import json
    import subprocess
    import sys

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak-RSS counter")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def fake_hub_cache(hf_home: Path, repo: str, model_dir: Path) -> None:
    """Copies model_dir into HF_HOME/hub in the layout huggingface_hub's cache uses
    (models--org--name/{refs/main, snapshots/<hash>/}), so `repo` loads offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def offline_hub_env(hf_home: Path) -> dict[str, str]:
    """os.environ for a child process that reads the hub only from the cache under hf_home.
    huggingface_hub reads these when it is imported, so they work only in a fresh process."""
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread (`pytestmark = pytest.mark.usefixtures("one_thread")`): on the shared
    2-core machine, two OpenMP threads that get descheduled make a small matmul ~6x slower
    (measured, docs/design/sampler.md, "Threads"); values are the same."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
