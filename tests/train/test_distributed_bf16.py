"""`torchrun -m rlvfast.train --dtype bf16` on the CPU (gloo, FSDP2 mixed precision) against one process.

One process with --dtype bf16 keeps bf16 weights and float32 master copies; FSDP2 keeps float32
shards (the master weights) and gathers them in bf16. Both sample and run the forward on the
same bf16 weights (the rounding of the same float32 masters), but they round in different
places: one process runs the packed forward and sums its two micro-batches' bf16 gradients in
bf16 before the float32 copy; FSDP2 runs HF's forward, each rank's one micro-batch's bf16
gradient is cast to float32 and summed over the ranks in float32. So the step's loss and grad
norm differ by rounding only (`BF16_REL`); the weights after the step differ where Adam's first
step, lr * g / (|g| + eps) ~ lr * sign(g), sees a gradient element smaller than those roundings
and moves it the other way (`assert_same_update`). The micro model, options and launch helpers
are `test_distributed`'s.
"""
import pytest
import torch
from safetensors.torch import load_file

from rlvfast.models import load_model
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import distributed, precision
from rlvfast.train import loop as train_mod
from test_distributed import COMPARED, config, finish, interrupted_copy, metrics, quiet, sharded_weights, torchrun
from test_distributed import reward_dir  # noqa: F401 (the fixture)

# one optimizer step per batch: the logged loss and grad norm are those of the weights both runs start the step on;
# lr 1e-4: a step moves a weight (~0.02) by less than a few bf16 steps of it, where master weights matter
BF16 = dict(dtype="bf16", ppo_epochs=1, lr=1e-4)
# one bf16 rounding (8-bit significand) of one element; through this one-layer model the loss and
# the norm sum many elements whose roundings partly cancel, so they differ by less (measured: 5e-8,
# 3e-5). Deeper models differ more: the shipped tiny model's packed and HF forwards, both bf16,
# give losses 1.5e-3 apart (docs/design/trainer.md); HF's forward in one process and under FSDP2, 8e-8
BF16_REL = 2.0 ** -9


def assert_same_step(got: dict, want: dict) -> None:
    for key in COMPARED:
        assert got[key] == pytest.approx(want[key], rel=BF16_REL, abs=1e-6), key


def assert_same_update(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], lr: float) -> None:
    """float32 weights after the same Adam step from the same weights. Adam's steps 1-3 move an element
    by at most 1.003 lr (m_hat / sqrt(v_hat), Cauchy-Schwarz over betas 0.9, 0.99); the gradients'
    rounding differences (~2^-8 relative) change that by ~lr / 256, so the median element agrees
    within lr / 100 (a master weight rounded to bf16 is off by up to 2^-9 of itself, a median ~1e-5
    here, 10x more). An element whose gradient is within those differences of 0 may move the other
    way, by up to 2.006 lr in all: at most 2% of them (measured at step 1: 0.12%)."""
    for name, tensor in want.items():
        diff = (got[name] - tensor).abs()
        assert float(diff.median()) <= lr / 100, name
        assert float((diff > lr / 10).float().mean()) <= 0.02, name
        assert float(diff.max()) <= 2.01 * lr, name


def untimed(step: dict) -> dict:
    """A step's metrics but its clock readings."""
    return {k: v for k, v in step.items() if not k.startswith("time/") and k != "tokens_per_second"}


def master_weights(path) -> dict[str, torch.Tensor]:
    """A one-process --dtype bf16 checkpoint's float32 master weights by parameter name."""
    model, _ = load_model(path, device=torch.device("cpu"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return dict(zip(names, ckpt.load_trainer_state(path)["master_weights"]))


@pytest.fixture(scope="module")
def runs(micro_dir, reward_dir, tmp_path_factory):
    """(a 3-step --dtype bf16 run at world size 2, the same in one process), a checkpoint after every step."""
    two_ranks, one_process = (tmp_path_factory.mktemp(name) / "run" for name in ("bf16ws2", "bf16ws1"))
    proc = torchrun(config(micro_dir, two_ranks, **BF16), reward_dir)
    train_mod.train(config(micro_dir, one_process, **BF16), log=quiet)
    finish(proc)
    return two_ranks, one_process


def test_a_bf16_step_at_world_size_2_equals_one_process(runs):
    two_ranks, one_process = runs
    assert_same_step(metrics(two_ranks)[0], metrics(one_process)[0])
    step1 = "checkpoints/step-000001"
    got = sharded_weights(two_ranks / step1)
    assert all(t.dtype == torch.float32 for t in got.values())  # DCP holds the float32 shards
    assert_same_update(got, master_weights(one_process / step1), BF16["lr"])


def test_final_is_the_bf16_rounding_of_the_shards_as_in_one_process(runs):
    two_ranks, one_process = runs
    final = load_file(two_ranks / "final" / "model.safetensors")
    shards = sharded_weights(two_ranks / "checkpoints" / "step-000003")
    assert final.keys() == load_file(one_process / "final" / "model.safetensors").keys()
    for name, tensor in final.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, shards[name].bfloat16()), name


def test_bf16_checkpoints_resume_at_world_size_2_and_1_and_from_one_process(runs, micro_dir, reward_dir, tmp_path):
    two_ranks, one_process = runs
    again, from_one = interrupted_copy(two_ranks, tmp_path / "ws2"), interrupted_copy(one_process, tmp_path / "1to2")
    procs = [torchrun(config(micro_dir, out, resume=True, **BF16), reward_dir) for out in (again, from_one)]
    alone = interrupted_copy(two_ranks, tmp_path / "ws1")
    train_mod.train(config(micro_dir, alone, resume=True, **BF16), log=quiet)  # the float32 shards on one rank
    for proc in procs:
        finish(proc)
    want = metrics(two_ranks)
    assert [untimed(m) for m in metrics(again)] == [untimed(m) for m in want]  # the same world size: bit for bit
    assert metrics(alone)[:2] == want[:2]
    assert_same_step(metrics(alone)[2], want[2])
    # 1 -> 2: the one-process checkpoint's master weights became the shards (bf16 weights would be off by 1e-5)
    assert_same_step(metrics(from_one)[2], metrics(one_process)[2])
    step3 = "checkpoints/step-000003"
    assert_same_update(sharded_weights(from_one / step3), master_weights(one_process / step3), BF16["lr"])


def test_master_weights_become_the_float32_shards(micro_dir):
    model, _ = load_model(micro_dir, device=torch.device("cpu"))
    model.to(torch.bfloat16)
    master = precision.MasterWeights(precision.trainable(model))
    torch.manual_seed(0)
    for p in master.params:  # float32 values a bf16 weight cannot hold
        p.data += 1e-4 * torch.randn_like(p)
    distributed.join_alone(torch.device("cpu"))
    try:
        distributed.shard(model, "bf16")
        ckpt.load_master_weights(model, master.state_dict())
        for p, want in zip(precision.trainable(model), master.params):
            assert torch.equal(p.full_tensor(), want.detach())
    finally:
        distributed.destroy()
