"""Everything `torch.distributed` for `torchrun --nproc-per-node N -m rlvfast.train ...`.

`init` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and joins
the process group (gloo on the CPU, nccl on CUDA with device LOCAL_RANK) with the collective
timeout `--dist-timeout`; without that environment it returns `SINGLE` and touches nothing, so
a plain `python -m rlvfast.train` runs exactly as before. `join_alone` makes a one-process gloo
group (to load a sharded checkpoint without torchrun). `World` says who this process is and
holds the collectives the trainer uses: gather a Python list from every rank (rank order, so
the concatenation is the one-process batch), sum floats, a barrier, broadcast from rank 0.
A collective that fails (a peer died, or did not answer within the timeout) raises
`DistributedError` naming this rank and the collective; the group is then broken: `destroy`
leaves it alone and `abandon` ends the process without tearing it down. `shard` applies FSDP2
(`fully_shard`: each decoder layer, then the root, which keeps the embeddings, the final norm
and the lm head; gradients summed over ranks, not averaged; float32 shards, gathered in bf16
with --dtype bf16), `full_weights` unshards every FSDP2 unit for a block (sampling: the
Sampler reads the weights directly), `register_unit_calls` / `unit_call` run a function as a
unit's forward (the trainer's packed forward), `clip_grad_norm` is the global norm of sharded
gradients.
A LoRA model (peft wraps the linears in place, `base_model.layers` stays) is sharded the same
way: a unit holds frozen base weights and trainable adapters together, and FSDP2
reduce-scatters the gradients there are, the adapters'.

Not here: what is sharded when (`rlvfast.train.loop`), the sharded checkpoint files
(`rlvfast.train.checkpoint`).
"""
from __future__ import annotations

import os
import socket
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rlvfast.cli import UserError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """A collective failed: a peer rank died or did not answer within --dist-timeout."""


_broken = False  # a collective failed: the process group cannot be torn down (see `abandon`)


@dataclass(frozen=True, slots=True)
class World:
    """This process's place in the job: rank, world size, local rank (its GPU on the node)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: int = 0
    is_distributed: bool = False  # a process group is up (world size 1 included: `join_alone`)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes metrics.jsonl, summary.json and final/."""
        return self.rank == 0

    def _check(self, what: str, fn, *args):
        global _broken
        try:
            return fn(*args)
        except (RuntimeError, ConnectionError) as e:  # gloo/nccl: DistBackendError, "Connection closed by peer"
            _broken = True
            raise DistributedError(f"rank {self.rank} of {self.size}: {what} failed: a peer rank died or did not "
                                   f"answer within --dist-timeout {self.timeout_s} s ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''})") from e

    def gather(self, items: list, what: str = "gather") -> list:
        """Every rank's `items`, concatenated in rank order (`items` itself in one process)."""
        if not self.is_distributed:
            return list(items)
        parts: list = [None] * self.size
        self._check(what, dist.all_gather_object, parts, list(items))
        return [x for part in parts for x in part]

    def sum(self, values: list[float], what: str = "all-reduce") -> list[float]:
        """Each value summed over the ranks, in float64 (`values` itself in one process)."""
        if not self.is_distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        self._check(what, dist.all_reduce, tensor)
        return tensor.cpu().tolist()

    def barrier(self, what: str = "barrier") -> None:
        if self.is_distributed:
            self._check(what, dist.barrier)

    def broadcast(self, value, what: str = "broadcast"):
        """Rank 0's `value` on every rank."""
        if not self.is_distributed:
            return value
        box = [value]
        self._check(what, dist.broadcast_object_list, box, 0)
        return box[0]


SINGLE = World()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ENV)


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r}: expected an int (torchrun sets it)") from None


def init(device: torch.device, timeout_s: int) -> World:
    """Joins torchrun's process group; `SINGLE` (nothing done) without torchrun's environment.
    gloo on the CPU; nccl on CUDA (`device`: --device's), this process on GPU LOCAL_RANK."""
    if not launched_by_torchrun():
        return SINGLE
    rank, size, local_rank = (_env_int(name) for name in ENV)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank}: this node has {torch.cuda.device_count()} CUDA device(s); "
                            f"start at most that many processes per node (torchrun --nproc-per-node)")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return World(rank, size, local_rank, timeout_s, True)


def join_alone(device: torch.device, timeout_s: int = 600) -> World:
    """A one-process group (no torchrun; gloo, nccl on CUDA): to resume a sharded checkpoint in
    one process, the model sharded over one rank."""
    if not dist.is_initialized():
        with socket.socket() as s:  # a free port for the group's store
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=0, world_size=1, timeout=timedelta(seconds=timeout_s))
    return World(0, 1, 0, timeout_s, True)


def destroy() -> None:
    """Leaves the process group, if any (`init`'s or `join_alone`'s; call it in a finally).
    A broken group (a collective failed) is left as it is: see `abandon`."""
    if dist.is_initialized() and not _broken:
        dist.destroy_process_group()


def abandon(code: int) -> None:
    """After a failed collective: ends the process with `code` at once (stdout and stderr
    flushed). The broken group cannot be torn down: gloo and nccl have no abort for a pending
    collective, and their threads, destroyed at interpreter exit, can abort the process
    (SIGABRT, "terminate called without an active exception") instead of exiting with `code`.
    Returns (does nothing) when no collective failed."""
    if not _broken:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device_of(world: World, device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK under torchrun on GPUs, else `device`."""
    return torch.device("cuda", world.local_rank) if world.is_distributed and device.type == "cuda" else device


def check_divides(world: World, prompts_per_step: int) -> None:
    """Each rank samples whole groups: --prompts-per-step must be a multiple of the world size."""
    if prompts_per_step % world.size:
        raise UserError(f"--prompts-per-step {prompts_per_step} is not a multiple of the world size {world.size}: "
                        f"each rank samples prompts_per_step / world_size whole groups")


def local_slice(world: World, items: list) -> tuple[list, int]:
    """(this rank's contiguous share of `items`, the index of its first item); the shares are
    equal when the world size divides len(items), else they differ by one item at most."""
    first, end = world.rank * len(items) // world.size, (world.rank + 1) * len(items) // world.size
    return items[first:end], first


# ----------------------------------------------------------------------------- FSDP2
def shard(model: torch.nn.Module, dtype_name: str) -> None:
    """FSDP2 in place: each decoder layer, then the root (embeddings, final norm and lm head,
    tied or not, in the root's unit). Gradients are summed over ranks (the loss weights are
    normalized over the global batch already). The shards are float32 (upcast from --dtype
    bf16's weights, exactly): the optimizer steps them, so they are the master weights. --dtype
    bf16: FSDP2 mixed precision, the unsharded weights (sampling, forward, backward) in bf16,
    the gradients reduced in float32; auto and fp32: float32 throughout (auto's bf16 autocast
    on cuda is `precision.autocast`'s, as in one process)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # the trainer reads the root's outputs (hidden states) without in-place ops, which FSDP2 warns against
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor", category=UserWarning)
    model.float()
    policy = MixedPrecisionPolicy()
    if dtype_name == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.base_model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for unit in fsdp_units(model):  # a plain SUM (gloo has no PREMUL_SUM), not divided by the world size
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_weights(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block every FSDP2 unit is unsharded: the module attributes are the full
    parameters (the same tensor objects at every unshard), so code that reads weights directly
    (the Sampler's fast trunk and lm head) sees them. A model without FSDP2: nothing done."""
    units = fsdp_units(model)
    layers = [unit for unit in units if unit is not model]  # the root keeps its weights after forward anyway
    for unit in units:
        unit.unshard()
    for unit in layers:  # a forward in the block (HF's trunk) must not reshard: its next one would all-gather,
        unit.set_reshard_after_forward(False, recurse=False)  # a collective the other ranks may never join
    try:
        yield
    finally:
        for unit in layers:
            unit.set_reshard_after_forward(True, recurse=False)  # `shard`'s setting for the layers
        for unit in units:
            unit.reshard()


# ----------------------------------------------------------------------------- FSDP2: forwards that read weights
UNIT_CALL = "rlvfast_unit_call"  # the forward method `register_unit_calls` gives each FSDP2 unit


def _run(self: torch.nn.Module, fn, *args):
    """The forward method FSDP2 wraps (`register_unit_calls`): fn(*args)."""
    return fn(*args)


def register_unit_calls(model: torch.nn.Module) -> None:
    """Gives each FSDP2 unit of `model` a second forward method, `unit_call`'s: fn(*args) runs
    inside the unit's FSDP2 hooks (`register_fsdp_forward_method`): its parameters gathered
    before, resharded after (the root: kept, as after its own forward), gathered again in the
    backward and their gradients reduce-scattered. For code that reads a unit's weights
    directly instead of calling its `forward` (the trainer's packed forward)."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    for unit in fsdp_units(model):
        setattr(unit, UNIT_CALL, types.MethodType(_run, unit))
        register_fsdp_forward_method(unit, UNIT_CALL)


def unit_call(module: torch.nn.Module, fn, *args):
    """fn(*args), as a forward of `module` where it is an FSDP2 unit (`register_unit_calls`);
    plainly fn(*args) otherwise. fn must read the unit's parameters through `module`'s
    attributes (FSDP2 swaps in the gathered tensors) and take its grad-carrying tensors in
    `args` (FSDP2's backward hooks attach to them and to its outputs)."""
    call = getattr(module, UNIT_CALL, None)
    return fn(*args) if call is None else call(fn, *args)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clips the (sharded) gradients to the global norm `max_norm`; returns that norm before clipping."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)
