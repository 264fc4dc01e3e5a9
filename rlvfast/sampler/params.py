"""`SamplingParams`: how many samples per prompt, how long, and from which distribution.

A small validated dataclass in the vLLM convention. It says nothing about verification
(that is `Sampler.generate(score=...)`) or about batching (the sampler decides).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SamplingParams:
    """n samples per prompt of at most `max_tokens` new tokens each.

    temperature=0 is greedy (argmax; the reported log-probs are then the log-softmax at
    temperature 1). top_k=0 and top_p=1 switch those filters off; top-k is applied before
    top-p, as in vLLM. `seed`: each sample draws from its own counter-based stream keyed by
    (seed, its prompt, its index among the n), so a prompt gets the same samples whatever else
    is in the batch (see rng.py); None: a seed from torch's global generator. `stop`:
    strings that end a sample (see `Sampler.generate`).
    """
    n: int = 1
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = field(default=None)
    ignore_eos: bool = False  # keep sampling past EOS (benchmarks of fixed length, as vLLM's)

    def __post_init__(self) -> None:
        for name in ("n", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SamplingParams.{name} must be an int >= 1, got {value!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not _is_real(self.temperature) or not 0.0 <= self.temperature < float("inf"):
            raise ValueError(f"SamplingParams.temperature must be a finite number >= 0 (0 = greedy), "
                             f"got {self.temperature!r}")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"SamplingParams.seed must be an int or None, got {self.seed!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"SamplingParams.ignore_eos must be a bool, got {self.ignore_eos!r}")
        if self.stop is not None:
            if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
                raise ValueError(f"SamplingParams.stop must be a list of non-empty strings, got {self.stop!r}")
            self.stop = list(self.stop)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
