"""Memory options of the trainer on tiny models: LoRA (`--lora-r`: only the adapters train,
checkpoints hold the adapter, `--resume` goes on from it bit for bit, final/ is the merged plain
model) and `--dtype bf16` (bf16 weights, float32 master weights the optimizer steps, saved and
restored on resume); bad combinations are errors naming the option."""
import json
import warnings

import pytest
import torch
from models.test_architectures import build  # tests/ is on sys.path (conftest.py)

from rlvfast.cli import UserError
from rlvfast.models import load_model
from rlvfast.train import loop as train_mod
from rlvfast.train.config import TrainConfig, parse_config
from rlvfast.train.precision import MasterWeights

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build("qwen2", tmp_path_factory.mktemp("prec") / "model")


def run(model_dir, out, steps, **kw):
    config = TrainConfig(model=str(model_dir), out=str(out), steps=steps, prompts_per_step=2, group_size=4,
                         max_new_tokens=8, micro_batch=5, eval_problems=0, verify_prompt="\nOK?\n",
                         checkpoint_every=1, lr=1e-2, warmup=0, lr_schedule="constant", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's deprecation notices
        train_mod.train(config, log=lambda *a: None)


def weights(folder) -> dict[str, torch.Tensor]:
    model, _ = load_model(folder)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lora_trains_the_adapters_saves_them_and_merges_them_into_final(model_dir, tmp_path):
    out = tmp_path / "run"
    run(model_dir, out, steps=2, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj", "down_proj"])
    step = out / "checkpoints" / "step-000002"
    names = {p.name for p in step.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names and "model.safetensors" not in names
    adapter_config = json.loads((step / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["base_model_name_or_path"] == str(model_dir.resolve())
    start, final = weights(model_dir), weights(out / "final")
    assert set(final) == set(start)  # final/ is the plain model, no lora_ keys
    changed = {n for n in start if not torch.equal(start[n], final[n])}
    assert changed and all(any(t in n for t in ("q_proj", "v_proj", "down_proj")) for n in changed), changed
    assert any("down_proj" in n for n in changed)
    # the checkpoint folder loads as the merged model too (what the final step merged)
    checkpoint = weights(step)
    assert all(torch.allclose(checkpoint[n], final[n], atol=1e-6) for n in final)


def test_lora_resume_equals_the_uninterrupted_run(model_dir, tmp_path):
    options = dict(lora_r=2, lora_alpha=4)
    run(model_dir, tmp_path / "full", steps=3, **options)
    run(model_dir, tmp_path / "part", steps=2, **options)
    config = parse_config(["--out", str(tmp_path / "part"), "--resume", "--steps", "3"],
                          saved_config=train_mod.setup.saved_config)
    assert config.lora_r == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_mod.train(config, log=lambda *a: None)
    full, part = weights(tmp_path / "full" / "final"), weights(tmp_path / "part" / "final")
    assert all(torch.equal(full[n], part[n]) for n in full)


def test_master_weights_keep_updates_a_bf16_weight_would_lose():
    """AdamW at lr 1e-4 moves a weight of 1.0 by ~1e-4 per step, under bf16's resolution at 1.0
    (2^-7): stepped in bf16 the weight never moves; through float32 master weights it moves."""
    plain = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0)
    mixed = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    master = MasterWeights([mixed])
    master_optimizer = torch.optim.AdamW(master.params, lr=1e-4, weight_decay=0.0)
    for _ in range(100):
        for p in (plain, mixed):
            p.grad = torch.ones_like(p)
        optimizer.step()
        master.take_grads()
        master_optimizer.step()
        master.put_weights()
    assert torch.equal(plain, torch.ones_like(plain))
    assert torch.allclose(master.params[0], torch.full((4,), 1 - 1e-2), atol=1e-4)
    assert mixed.dtype == torch.bfloat16 and torch.equal(mixed, master.params[0].to(torch.bfloat16))
    assert not torch.equal(mixed, torch.ones_like(mixed))


def test_bf16_run_keeps_master_weights_and_resumes_bit_for_bit(model_dir, tmp_path):
    run(model_dir, tmp_path / "full", steps=3, dtype="bf16")
    run(model_dir, tmp_path / "part", steps=2, dtype="bf16")
    state = torch.load(tmp_path / "part" / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
    saved = weights(tmp_path / "part" / "checkpoints" / "step-000002")
    masters = state["master_weights"]
    assert masters and all(m.dtype == torch.float32 for m in masters)
    # the saved model's weights are the master weights rounded to bf16
    assert sorted(m.to(torch.bfloat16).float().sum().item() for m in masters) == pytest.approx(
        sorted(p.sum().item() for p in saved.values()), rel=1e-6)
    config = parse_config(["--out", str(tmp_path / "part"), "--resume", "--steps", "3"],
                          saved_config=train_mod.setup.saved_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_mod.train(config, log=lambda *a: None)
    full, part = weights(tmp_path / "full" / "final"), weights(tmp_path / "part" / "final")
    assert all(torch.equal(full[n], part[n]) for n in full)
    start = weights(model_dir)
    assert any(not torch.equal(start[n], full[n]) for n in full)


@pytest.mark.parametrize("argv, message", [
    (["--lora-r", "4", "--lora-target-modules", "lm_head", "q_proj"], "--lora-target-modules lm_head"),
    (["--lora-r", "-1"], "--lora-r must be an int >= 0"),
    (["--lora-r", "4", "--lora-alpha", "0"], "--lora-alpha must be a finite number > 0"),
])
def test_bad_lora_options_name_the_option(argv, message):
    with pytest.raises(UserError, match=message):
        parse_config(argv)


def test_dtype_takes_only_its_choices(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--dtype", "fp16"])
    assert "--dtype" in capsys.readouterr().err


def test_lora_without_peft_is_an_error_naming_the_package(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(UserError, match=r"--lora-r 4 needs the peft package: pip install 'rlvfast\[lora\]'"):
        TrainConfig(lora_r=4)


def test_lora_target_modules_the_model_lacks_is_an_error_naming_them(model_dir, tmp_path):
    with pytest.raises(UserError, match="--lora-target-modules qkv_fused"):
        run(model_dir, tmp_path / "run", steps=1, lora_r=2, lora_target_modules=["qkv_fused"])
