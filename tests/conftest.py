"""Shared test setup: Triton runs through its CPU interpreter, shared/ paths, tiny models.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at
the top of the first module pytest loads.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SMOLLM2_GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/, or skip the test where it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/ is absent on this machine)")
    return path


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


def cpu_backends(kernel_module: str) -> list[str]:
    """The backends an op test runs on the CPU: the reference, C++ when built, and Triton
    (through the interpreter) when `rlvfast.kernels.<kernel_module>` imports."""
    import importlib

    import rlvfast.ops as ops

    usable = ops.available_backends("cpu")
    backends = [b for b in ("reference", "cpp") if b in usable]
    if "triton" in usable:
        try:
            importlib.import_module(f"rlvfast.kernels.{kernel_module}")
            backends.append("triton")
        except ImportError:
            pass
    return backends


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
