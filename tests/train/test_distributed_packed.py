"""The trainer's packed forward (`rlvfast.train.forward.read_hidden`) under FSDP2 (design (b)).

In one process on a one-rank group: read_hidden on the sharded model runs as one call of the
root unit and one call of each layer's unit (counted), never HF's forward, and gives the
unsharded model's hidden states and, through a loss that reads the lm head's weight after it
(as the trainer's fused loss does), its gradients, every one of them sharded by FSDP2; no
layer's concatenated weights outlive its call (the backward rebuilds them).
`loop.update` on the sharded model through the packed forward and through the root's own
forward (what other architectures run) equals the one-process update.
At world size 2 (torchrun, gloo): one RL^V step of a 2-layer model (a first layer and a last
one, which runs only the read rows) with --gradient-checkpointing equals one process.
"""
import gc
import weakref

import pytest
import torch

from rlvfast.models import TinyModelConfig, build_tiny_model, load_model
from rlvfast.train import distributed
from rlvfast.train import forward as train_forward
from rlvfast.train import loop as train_mod
from test_distributed import (assert_same_step, config, finish, metrics, quiet, reward_dir,  # noqa: F401
                              sharded_weights, torchrun)
from test_forward import _rows


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("packed") / "m",
                            TinyModelConfig(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, seed=3))


def _loss(model, hidden: torch.Tensor) -> torch.Tensor:
    """A loss that reads the lm head's weight after the trunk, in the forward and the backward."""
    weight = model.get_output_embeddings().weight  # (V, H)
    return torch.logsumexp(hidden @ weight.T, dim=-1).sum()


def _full(grad: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    assert isinstance(grad, DTensor), "a gradient FSDP2 did not reduce-scatter"
    return grad.full_tensor()


def test_read_hidden_runs_as_calls_of_the_fsdp2_units(two_layers, monkeypatch):
    ids, _, lengths, cut, read = _rows()
    plain, _ = load_model(two_layers)
    want = train_forward.read_hidden(plain, ids, lengths, cut, read)  # (M, H)
    _loss(plain, want).backward()

    sharded, _ = load_model(two_layers)
    calls = []

    def counted(self, fn, *args):
        calls.append(self)
        return fn(*args)

    monkeypatch.setattr(distributed, "_run", counted)
    for module in (sharded, *sharded.base_model.layers):  # the instances: HF wraps its classes' forward once
        monkeypatch.setattr(module, "forward", lambda *a, **k: pytest.fail("HF's forward ran"))
    distributed.join_alone(torch.device("cpu"))
    try:
        distributed.shard(sharded, "fp32")
        distributed.register_unit_calls(sharded)
        fused = []

        class Recorded(train_forward.FusedLayer):
            def __init__(self, *args):
                super().__init__(*args)
                if torch.is_grad_enabled():  # the forward's, not the backward's rebuilt ones
                    fused.extend(weakref.ref(w) for w in (self.qkv, self.gate_up))

        monkeypatch.setattr(train_forward, "FusedLayer", Recorded)
        got = train_forward.read_hidden(sharded, ids, lengths, cut, read, checkpoint=True)
        assert calls == [sharded, *sharded.base_model.layers]  # the root, then each layer once
        gc.collect()
        # 2 per layer, and the checkpointed suffix of the first layer builds its own (the last one is not checkpointed)
        assert len(fused) == 6 and all(ref() is None for ref in fused)  # no fused copy waits for the backward
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        _loss(sharded, got).backward()
        grads = {name: p.grad for name, p in sharded.named_parameters()}
        for name, p in plain.named_parameters():
            torch.testing.assert_close(_full(grads[name]), p.grad, rtol=1e-5, atol=1e-6, msg=name)
    finally:
        distributed.destroy()


def test_a_packed_step_at_world_size_2_equals_one_process(two_layers, reward_dir, tmp_path):  # noqa: F811
    cfg = dict(steps=1, gradient_checkpointing=True)
    two = tmp_path / "two"
    finish(torchrun(config(two_layers, two, **cfg), reward_dir))
    one = tmp_path / "one"
    train_mod.train(config(two_layers, one, **cfg), log=quiet)
    assert_same_step(metrics(two)[0], metrics(one)[0])
    from safetensors.torch import load_file

    want = load_file(one / "final" / "model.safetensors")
    got = sharded_weights(two / "checkpoints" / "step-000001")
    for name, tensor in want.items():  # per tensor, relative L2: see test_distributed's equality test
        assert float((got[name] - tensor).norm()) <= 1e-5 * float(tensor.norm()), name


def test_update_under_fsdp2_equals_one_process_through_either_forward(two_layers):
    """`loop.update` on the sharded model (a one-rank group), the packed forward (design (b))
    and the root module's forward (design (a), what a model `forward.supports` refuses runs):
    the one-process update's loss, grad norm, P("Yes") and weights; two micro-batches."""
    from types import SimpleNamespace

    from rlvfast.train.config import TrainConfig
    from rlvfast.train.loss import Sample

    g = torch.Generator().manual_seed(4)
    samples = [Sample([11, 12, 13, 14] if i < 3 else [21, 22], completion, -torch.rand(len(completion), generator=g),
                      advantage=0.7 - 0.3 * i, token_weight=0.1, label_id=99 + i % 2, label_weight=1 / 6)
               for i, completion in enumerate([[40, 41, 1], [42, 43, 44, 45], [1], [46, 1], [47, 48, 49], [50]])]
    config = TrainConfig(model=str(two_layers), out="unused", group_size=3, prompts_per_step=2, micro_batch=4,
                         max_new_tokens=4, lr=1e-2, eval_problems=0)
    sampler = SimpleNamespace(verify_ids=[60, 61], eos_ids=[1], yes_id=99, no_id=100)

    def update(world, fast):
        model, _ = load_model(two_layers)
        if world.is_distributed:
            distributed.shard(model, "fp32")
            distributed.register_unit_calls(model)
        run = train_mod.Run(config, model, SimpleNamespace(pad_token_id=0), sampler,
                            torch.optim.AdamW(model.parameters(), lr=1e-2), None, None, config.loss_config(), None,
                            torch.device("cpu"), fast_forward=fast, world=world)
        result = train_mod.update(run, samples)
        return result, {name: getattr(p, "full_tensor", lambda: p)().detach() for name, p in model.named_parameters()}

    want, want_weights = update(distributed.SINGLE, True)
    assert not want["skipped"] and len(want["p_yes"]) == 6
    world = distributed.join_alone(torch.device("cpu"))
    try:
        for fast in (True, False):
            got, weights = update(world, fast)
            for key in ("loss", "loss/policy", "loss/verifier", "grad_norm"):
                assert got[key] == pytest.approx(want[key], rel=1e-5), (fast, key)
            assert got["p_yes"] == pytest.approx(want["p_yes"], rel=1e-5)
            for name, tensor in want_weights.items():  # relative L2: see test_distributed's equality test
                assert float((weights[name] - tensor).norm()) <= 1e-5 * float(tensor.norm()), (fast, name)
    finally:
        distributed.destroy()
