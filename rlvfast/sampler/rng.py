"""Counter-based random numbers per sample: a sample's draws depend on who it is, not on its batch.

Each sample gets a 64-bit key from (seed, its prompt's token ids, which occurrence of that
prompt in the call it is, its index among the prompt's n samples) and draws one uniform per
step: the SplitMix64 output for state `key + (step + 1) * golden` (step = tokens sampled so
far). So a prompt sampled alone or beside other prompts, with a different n, or at another
row of the decode batch gets the same samples; the first k of n samples equal those of n=k.
A prompt given twice in one call gets two different streams (its second occurrence is its
own request). seed=None draws the seed from torch's global generator (so torch.manual_seed
still makes runs repeatable).

vLLM does this with one torch.Generator per seeded request and a per-row `exponential_`
over the vocabulary; here one uniform per row and step is enough, because `sample_tokens`
draws by inverting the CDF, and it costs ~1 us per row in Python. Not here: the draw itself
(sampling.py).
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence as Seq

import torch

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    """SplitMix64's output function (a bijection of 64-bit ints with good avalanche)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def resolve_seed(seed: int | None) -> int:
    """`seed`, or one drawn from torch's global generator when None."""
    if seed is not None:
        return seed
    return int(torch.randint(0, 2**62, (1,)).item())


def sample_keys(seed: int, prompt_ids: Seq[Seq[int]], n: int) -> list[int]:
    """One key per sample, in generate()'s order (prompt-major): len(prompt_ids) * n keys."""
    seen: dict[tuple[int, ...], int] = {}
    keys = []
    for ids in prompt_ids:
        ids = tuple(ids)
        occurrence = seen.get(ids, 0)
        seen[ids] = occurrence + 1
        message = f"{seed}:{occurrence}:".encode() + struct.pack(f"<{len(ids)}q", *ids)
        digest = hashlib.blake2b(message, digest_size=8).digest()
        prompt_key = int.from_bytes(digest, "little")
        keys.extend(_mix64((prompt_key + j * _GOLDEN) & _MASK) for j in range(n))
    return keys


def uniforms(keys: Seq[int], step: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """U[0, 1) with 53 random bits for each key at `step` -> (len(keys),) float64."""
    offset = (step + 1) * _GOLDEN
    return torch.tensor([(_mix64((k + offset) & _MASK) >> 11) * 2.0**-53 for k in keys],
                        dtype=torch.float64, device=device)
