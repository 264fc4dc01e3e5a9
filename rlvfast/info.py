"""`python -m rlvfast.info`: versions, device and the active kernel backends.

Prints only; changes nothing.
"""
from __future__ import annotations

import platform
import sys

import torch

from rlvfast import _ext


def backend_report() -> dict[str, str]:
    """Each backend -> 'active', or why not."""
    cpu = torch.device("cpu")
    cuda = torch.device("cuda")
    cpp_err = _ext.cpp_error()
    report = {"reference": "active (always)"}
    report["cpp"] = "active" if cpp_err is None else f"not built ({cpp_err})"
    if not _ext.has_triton_package():
        report["triton"] = "not installed"
    elif _ext.triton_usable(cuda) and torch.cuda.is_available():
        report["triton"] = "active (CUDA)"
    elif _ext.triton_usable(cpu):
        report["triton"] = "active (CPU interpreter, TRITON_INTERPRET=1: for tests only)"
    else:
        report["triton"] = "installed, inactive (no CUDA device)"
    if _ext.has_cuda_ops():
        report["cuda"] = "active"
    elif cpp_err is None and not torch.cuda.is_available():
        report["cuda"] = "inactive (no CUDA device)"
    else:
        report["cuda"] = "not built (needs nvcc and a CUDA build of torch at install time)"
    return report


def main() -> None:
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    print(f"rlvfast       {version('rlvfast')}")
    print(f"python        {sys.version.split()[0]} ({platform.machine()})")
    for name in ("torch", "triton", "transformers", "math-verify", "safetensors"):
        print(f"{name:<13} {version(name)}")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device        {device}")
    print("backends:")
    for name, state in backend_report().items():
        print(f"  {name:<10} {state}")


if __name__ == "__main__":
    main()
