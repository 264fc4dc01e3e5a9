"""rlvfast: train one LLM as reasoner and verifier (RL^V), then vote with its own scores.

Public entry points: `Sampler` and `SamplingParams` (test-time sampling with in-cache
self-verification), `rlvfast.ops` (fused kernels), `rlvfast.voting`, and the commands
`python -m rlvfast.train`, `python -m rlvfast.eval`, `python -m rlvfast.info`.
Heavy submodules load lazily so `import rlvfast` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Sampler": ("rlvfast.sampler", "Sampler"),
    "SamplingParams": ("rlvfast.sampler", "SamplingParams"),
    "RequestOutput": ("rlvfast.sampler", "RequestOutput"),
    "Completion": ("rlvfast.sampler", "Completion"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'rlvfast' has no attribute {name!r}")
