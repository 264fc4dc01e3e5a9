"""`--lora-r` under torchrun (gloo, 2 CPU processes): FSDP2 over frozen base weights and trainable
adapters in the same units. One step at world size 2 equals one process's step (the loss, the
grad norm and the adapters it trained); a sharded checkpoint holds the adapters alone; resume
2 -> 2 gives the uninterrupted run's step exactly, 2 -> 1 and 1 -> 2 (a one-process adapter
checkpoint) up to float rounding; final/ is the merged model, as one process writes it.

The helpers and options are those of `test_distributed` (the same tiny model, reward, options).
"""
import pytest
import torch
from safetensors.torch import load_file

from rlvfast.models import load_model
from rlvfast.sampler import Sampler, SamplingParams
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import loop as train_mod
from rlvfast.train import setup
from test_distributed import (COMPARED, assert_same_step, config, finish, interrupted_copy, metrics,  # noqa: F401
                              quiet, reward_dir, sharded_weights, torchrun)

LORA = dict(lora_r=4, lora_alpha=8.0)


def lora_config(micro_dir, out, **overrides):
    return config(micro_dir, out, **LORA, **overrides)


@pytest.fixture(scope="module")
def runs(micro_dir, reward_dir, tmp_path_factory) -> tuple:
    """(world size 2, one process): the same 3-step LoRA run, a checkpoint after every step."""
    two, one = (tmp_path_factory.mktemp(name) / "run" for name in ("lora2", "lora1"))
    proc = torchrun(lora_config(micro_dir, two), reward_dir)
    train_mod.train(lora_config(micro_dir, one), log=quiet)
    finish(proc)
    return two, one


def adapters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (adapter) tensors of a model with LoRA, by their names in the model."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def saved_adapters(checkpoint) -> dict[str, torch.Tensor]:
    """A one-process checkpoint's adapter (peft's file) under the model's parameter names."""
    saved = load_file(checkpoint / "adapter_model.safetensors")
    # peft: base_model.model.<name>.lora_A.weight; the model: <name>.lora_A.default.weight
    return {name.removeprefix("base_model.model.").replace(".weight", ".default.weight"): t
            for name, t in saved.items()}


def start_adapters(micro_dir, out) -> dict[str, torch.Tensor]:
    """The adapters a run starts from (seeded: the same on every rank and in one process)."""
    cfg = lora_config(micro_dir, out)
    setup.seed_everything(cfg.seed)
    model = setup.load_models(cfg, torch.device("cpu"), None, quiet)[0]
    return adapters(model)


def test_a_lora_step_at_world_size_2_equals_one_process(runs, micro_dir, tmp_path):
    two, one = runs
    assert_same_step(metrics(two)[0], metrics(one)[0])
    want = saved_adapters(one / "checkpoints" / "step-000001")
    got = sharded_weights(two / "checkpoints" / "step-000001")
    assert got.keys() == want.keys()  # the sharded checkpoint holds the adapters alone
    start = start_adapters(micro_dir, tmp_path / "start")
    assert start.keys() == want.keys() and len(want) == 14  # 7 projections x (A, B), one layer
    for name, tensor in want.items():
        moved = tensor - start[name]
        assert float(moved.abs().min()) > 0, name  # the step (its 2 epochs) moved every adapter weight
        assert float((got[name] - tensor).norm()) <= 1e-5 * float(moved.norm()), name


def test_final_is_the_merged_model_as_in_one_process(runs, micro_dir):
    two, one = runs
    want = load_file(one / "final" / "model.safetensors")
    assert load_file(two / "final" / "model.safetensors").keys() == want.keys()  # a plain model: no adapter left
    got, tokenizer = load_model(two / "final", device=torch.device("cpu"))
    state, start = got.state_dict(), load_file(micro_dir / "model.safetensors")
    for name, tensor in want.items():
        assert float((state[name] - tensor).norm()) <= 1e-5 * float(tensor.norm()), name
        if name.endswith("proj.weight"):  # the adapted projections: merged, far from their start
            assert float((tensor - start[name]).norm()) > 1e-2 * float(tensor.norm()), name
    sampler = Sampler(got, tokenizer, verify_prompt="\nOK?\n")
    out = sampler.generate(["1+1="], SamplingParams(n=2, max_tokens=4, seed=0))
    assert len(out[0].completions) == 2


def test_lora_resumes_2_to_2_exactly_2_to_1_and_1_to_2(runs, micro_dir, reward_dir, tmp_path):
    """2 -> 2 and 1 -> 2 (a one-process adapter checkpoint) under torchrun, 2 -> 1 in one process."""
    two, one = runs
    again, from_one = interrupted_copy(two, tmp_path / "ws2"), interrupted_copy(one, tmp_path / "ws1to2")
    procs = [torchrun(lora_config(micro_dir, out, resume=True), reward_dir) for out in (again, from_one)]
    alone = interrupted_copy(two, tmp_path / "ws1")
    train_mod.train(lora_config(micro_dir, alone, resume=True), log=quiet)  # DCP reshards onto one rank
    for proc in procs:
        finish(proc)
    want = metrics(two)
    assert [m["step"] for m in metrics(again)] == [1, 2, 3]
    assert {k: metrics(again)[2][k] for k in COMPARED} == {k: want[2][k] for k in COMPARED}  # same world size: exact
    final = load_file(two / "final" / "model.safetensors")
    assert all(torch.equal(t, final[name]) for name, t in load_file(again / "final" / "model.safetensors").items())
    assert metrics(alone)[:2] == want[:2]
    assert_same_step(metrics(alone)[2], want[2])
    assert ckpt.is_sharded(ckpt.latest_checkpoint(from_one))
    assert_same_step(metrics(from_one)[2], metrics(one)[2])
