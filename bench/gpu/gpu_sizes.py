"""The shapes every step of the device check runs at: the H200 run's (`FULL`) and the dry run's
(`DRY`: CPU tensors, a tiny model, seconds). Holds numbers only; the steps read them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A Qwen2 decoder's shape (random weights: the speed of a model depends on its shape only)."""
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_params(self) -> int:
        """Parameters with the embedding tied to the lm head (Qwen2.5-0.5B: 494M)."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = h * h + 2 * h * kv + h * h + h + 2 * kv  # q, k, v, o and the q/k/v biases
        layer = attention + 3 * h * self.intermediate_size + 2 * h  # + gate/up/down and two norms
        return self.num_layers * layer + self.vocab_size * h + h


# Qwen2.5-0.5B's config (hidden 896, 24 layers, 14 query / 2 key-value heads, vocabulary 151936).
QWEN25_05B = ModelShape("Qwen2.5-0.5B shapes, random bf16 weights", 24, 896, 4864, 14, 2, 151936)
TINY = ModelShape("tiny Qwen2 (2 x 64), random weights", 2, 64, 128, 4, 2, 512)


@dataclass(frozen=True, slots=True)
class Sizes:
    """What each step runs at. `loss`: (N tokens, H, V) of the fused policy loss benchmark;
    `parity`: (N, H, V) of the op checks against the fp64 reference (V=151936 at N=1000 crosses
    the Triton launcher's 768-row chunk), `parity_groups` groups of 8 rewards for group_advantages;
    sampler: prompts x samples x new tokens; train: prompts x group x new tokens per step, the
    micro-batch in samples."""
    device: str
    loss: tuple[int, int, int]
    loss_reps: int
    liger_seq_len: int
    liger_compiled: bool
    parity: tuple[int, int, int]
    parity_groups: int  # group_advantages: groups of 8 rewards
    model: ModelShape
    sampler_prompts: int
    sampler_samples: int
    sampler_tokens: int
    train_prompts: int
    train_group: int
    train_tokens: int
    train_micro_batch: int
    op_tests: tuple[str, ...]  # pytest arguments

    def to_dict(self) -> dict:
        return asdict(self)


FULL = Sizes(device="cuda", loss=(16384, 1536, 151936), loss_reps=5, liger_seq_len=512, liger_compiled=True,
             parity=(1000, 256, 151936), parity_groups=4096, model=QWEN25_05B, sampler_prompts=32, sampler_samples=8,
             sampler_tokens=512, train_prompts=16, train_group=8, train_tokens=512, train_micro_batch=32,
             op_tests=("tests/ops",))
DRY = Sizes(device="cpu", loss=(64, 32, 512), loss_reps=2, liger_seq_len=16, liger_compiled=False,
            parity=(9, 16, 512), parity_groups=4, model=TINY, sampler_prompts=2, sampler_samples=2, sampler_tokens=8,
            train_prompts=2, train_group=2, train_tokens=8, train_micro_batch=4,
            op_tests=("tests/ops/test_group_advantages.py", "-k", "hand_computed"))
