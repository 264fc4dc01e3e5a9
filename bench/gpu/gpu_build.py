"""Steps `build`, `env` and `op_tests` of the device check.

build: installs the carried wheels (bench/gpu/wheels/*.whl: math-verify and its parser, Liger;
the device has no network) and rlvfast itself with `pip install --no-deps --no-build-isolation -e .`,
which compiles csrc/ with the CUDA op where nvcc is found (for sm_90 here: CUDAARCHS=90). If
that build fails, it is retried once with nvcc hidden (C++ CPU ops only), so the later steps
still run on the Triton kernels; the result says which. The dry run asks pip for a plan only
(`--dry-run`): nothing is installed or compiled.
env: versions, the device, and which backend `rlvfast.ops` has for CUDA tensors.
op_tests: pytest on tests/ops with RLVFAST_TEST_DEVICE set to the device (the tests run on
the CPU until they honour it; see bench/gpu/README.md).
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gpu_common import StepContext

WHEELS_DIR = Path("bench/gpu/wheels")
CUDA_BIN = "/usr/local/cuda/bin"
MAX_LOG_CHARS = 4000


def run_logged(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Runs cmd, its output streamed to ours line by line (a step killed at its time-out still
    shows how far it got); returns returncode, seconds and the output's tail."""
    start = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=400)
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line)
    return {"cmd": " ".join(cmd), "returncode": proc.returncode, "seconds": time.perf_counter() - start,
            "tail": "".join(tail)[-MAX_LOG_CHARS:]}


def build_step(ctx: StepContext) -> None:
    ctx.record(wheels=install_wheels(ctx), nvcc=nvcc_path())
    install = editable_install(ctx, hide_nvcc=False)
    ctx.record(install=install)
    if install["returncode"] != 0 and not ctx.dry_run:
        ctx.log("build: the build with the CUDA op failed; retrying with the C++ CPU ops only")
        ctx.record(install_without_cuda=editable_install(ctx, hide_nvcc=True))
        raise RuntimeError(f"pip install -e . failed with exit {install['returncode']} (the retry without "
                           f"nvcc exited {ctx.data['install_without_cuda']['returncode']}); see install.tail")


def nvcc_path() -> str | None:
    """nvcc on PATH, else CUDA's usual folder (setup.py builds the CUDA op only where PATH has nvcc)."""
    found = shutil.which("nvcc")
    if found is None and Path(CUDA_BIN, "nvcc").exists():
        found = str(Path(CUDA_BIN, "nvcc"))
    return found


def install_wheels(ctx: StepContext) -> dict:
    wheels = sorted((ctx.repo / WHEELS_DIR).glob("*.whl"))
    if not wheels:
        return {"returncode": None, "wheels": [], "note": f"no wheels in {WHEELS_DIR} (bench/gpu/fetch_wheels.sh "
                                                          "fetches them; math-verify grading and Liger need them)"}
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir",
           "--disable-pip-version-check"]
    cmd += ["--dry-run"] if ctx.dry_run else []
    result = run_logged(cmd + [str(w) for w in wheels], ctx.repo)
    return result | {"wheels": [w.name for w in wheels]}


def editable_install(ctx: StepContext, hide_nvcc: bool) -> dict:
    """pip install -e . for sm_90 (the dry run: --dry-run, no build); hide_nvcc: the C++ CPU ops only."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    nvcc = nvcc_path()
    if hide_nvcc:
        path = [p for p in path if not (Path(p) / "nvcc").exists()]
    elif nvcc is not None and shutil.which("nvcc") is None:
        path.insert(0, str(Path(nvcc).parent))
    env = dict(os.environ, CUDAARCHS="90", TORCH_CUDA_ARCH_LIST="9.0", PATH=os.pathsep.join(path))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--disable-pip-version-check"]
    cmd += ["--dry-run"] if ctx.dry_run else []
    return run_logged(cmd + ["-e", "."], ctx.repo, env)


def env_step(ctx: StepContext) -> None:
    import importlib.metadata as md
    import platform

    import torch

    from rlvfast import _ext, ops
    from rlvfast.info import backend_report

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    ctx.record(python=platform.python_version(), torch_cuda=torch.version.cuda,
               versions={n: version(n) for n in ("torch", "triton", "transformers", "liger-kernel", "math-verify",
                                                 "rlvfast")},
               backends=backend_report(), cuda_backends=ops.available_backends(ctx.device),
               has_cuda_op=_ext.has_cuda_ops(), matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
               **device_facts(ctx.device))


def device_facts(device) -> dict:
    import torch

    if device.type != "cuda":
        return {"device_name": "cpu", "num_threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {"device_name": props.name, "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "memory_gib": props.total_memory / 2**30}


def op_tests_step(ctx: StepContext) -> None:
    env = dict(os.environ, RLVFAST_TEST_DEVICE=ctx.sizes.device)
    env.pop("TRITON_INTERPRET", None)  # tests/conftest.py sets it for the CPU tests
    result = run_logged([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ctx.sizes.op_tests],
                        ctx.repo, env)
    ctx.record(pytest=result, args=list(ctx.sizes.op_tests), **pytest_counts(result["tail"]))
    if result["returncode"] != 0:
        raise RuntimeError(f"pytest {' '.join(ctx.sizes.op_tests)} exited {result['returncode']}")


def pytest_counts(output: str) -> dict:
    """{'passed': n, 'failed': n, ...} from pytest's last summary line."""
    counts = {}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", output):
        counts[word] = int(number)
    return counts
