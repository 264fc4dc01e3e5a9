"""The run's precision (`--dtype`): the weights' dtype, the autocast of the update, and for bf16
weights the float32 master copies the optimizer steps.

    auto   float32 weights; on cuda the forward runs under bf16 autocast
    fp32   float32 weights and compute everywhere
    bf16   bf16 weights (half the memory of sampling, the forward and the saved activations);
           on cuda under bf16 autocast. The optimizer never steps a bf16 weight: LoRA adapters stay
           float32 (peft keeps them so), and a full fine-tune steps float32 master copies
           (`MasterWeights`) and writes them back rounded, since an AdamW update of a real LLM
           (lr ~1e-6) is far below a bf16 weight's resolution (2^-8 of its size) and would be lost.

Under torchrun the same three mean the same, but FSDP2 holds the weights: its float32 shards are
what AdamW steps (so no `MasterWeights`), and bf16 is FSDP2's mixed precision (the unsharded
weights in bf16, the gradients reduced in float32; `rlvfast.train.distributed.shard`).

Not here: the loss's own float32 accumulation (`rlvfast.ops`), the sampler (it runs in the
weights' dtype).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch


def weight_dtype(name: str) -> torch.dtype:
    """The dtype `--dtype name` stores the model's weights in."""
    return torch.bfloat16 if name == "bf16" else torch.float32


def autocast(device: torch.device, name: str = "auto"):
    """The update's autocast: bf16 on cuda unless --dtype fp32; none on the CPU."""
    if device.type == "cuda" and name != "fp32":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates (all of them, or a LoRA model's adapters)."""
    return [p for p in model.parameters() if p.requires_grad]


class MasterWeights:
    """float32 copies of a model's low-precision trainable parameters: the backward fills the
    model's grads, `take_grads` moves them (as float32) onto the copies, the optimizer steps the
    copies, `put_weights` writes them back into the model, rounded."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.model_params = params
        self.params = [torch.nn.Parameter(p.detach().float().clone()) for p in params]

    @staticmethod
    def needed(params: list[torch.nn.Parameter]) -> bool:
        return any(p.dtype != torch.float32 for p in params)

    def take_grads(self) -> None:
        for p, master in zip(self.model_params, self.params):
            master.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def put_weights(self) -> None:
        for p, master in zip(self.model_params, self.params):
            p.copy_(master)

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach().clone() for m in self.params]

    @torch.no_grad()
    def load_state_dict(self, tensors: list[torch.Tensor]) -> None:
        if len(tensors) != len(self.params):
            raise ValueError(f"master weights: the checkpoint holds {len(tensors)} tensors, the model "
                             f"trains {len(self.params)}")
        for master, saved in zip(self.params, tensors):
            master.copy_(saved)
        self.put_weights()
