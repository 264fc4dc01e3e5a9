"""`python -m rlvfast.info`: versions, device, the active kernel backends, and the backend
`auto` picks for each op on CPU and on CUDA tensors.

Prints only; changes nothing. The picking rule itself is rlvfast.ops.auto_backend.
"""
from __future__ import annotations

import platform
import sys

import torch

from rlvfast import _ext, ops


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


def auto_report() -> dict[str, dict[str, str]]:
    """op -> {"cpu": backend, "cuda": backend}: what backend="auto" runs for tensors on each device."""
    usable = {device: ops.available_backends(device) for device in ("cpu", "cuda")}
    return {op: {device: ops.auto_backend(op, device, usable[device]) for device in usable} for op in ops.OP_BACKENDS}


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
    cuda_note = "" if torch.cuda.is_available() else " (no CUDA device here: what CUDA tensors would get)"
    print(f"backend='auto' picks{cuda_note}:")
    print(f"  {'op':<18} {'cpu tensors':<12} cuda tensors")
    for op, picks in auto_report().items():
        print(f"  {op:<18} {picks['cpu']:<12} {picks['cuda']}")
    if "cuda" in ops.available_backends("cuda"):
        print("  (the CUDA C++ group_advantages runs only with backend='cuda': not yet timed against Triton)")


if __name__ == "__main__":
    main()
