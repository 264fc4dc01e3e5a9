"""Finds out which compiled kernel backends are usable in this process.

Loads the C++/CUDA extension rlvfast._C once (warning once if it is missing, never
failing the import) and checks for Triton. It holds no kernels and picks no backend
for an op: rlvfast.ops does that from these answers.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch


@functools.cache
def cpp_error() -> str | None:
    """None when rlvfast._C loaded, else why it did not."""
    try:
        import rlvfast._C  # noqa: F401  (registers torch.ops.rlvfast.*)
    except ImportError as e:
        warnings.warn(
            f"rlvfast: compiled ops not available ({e}); using the PyTorch reference ops. "
            "Reinstall with `pip install --no-build-isolation -e .` to build them.",
            RuntimeWarning, stacklevel=3)
        return str(e)
    return None


def has_cpp() -> bool:
    return cpp_error() is None


def has_cuda_ops() -> bool:
    """The CUDA kernels in csrc/cuda were compiled in and a GPU is present."""
    return has_cpp() and torch.cuda.is_available() and hasattr(torch.ops.rlvfast, "group_advantages_cuda")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def has_triton_package() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_usable(device: torch.device) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (tests)."""
    if not has_triton_package():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
