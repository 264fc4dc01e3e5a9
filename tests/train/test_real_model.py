"""A real model end to end (issue 14), skipped without ../shared: SmolLM2-135M from its GGUF file
on GSM8K, two RL^V steps, a checkpoint, `--resume` to a third, `final/` read by transformers,
then `python -m rlvfast.eval` on it. Small settings (2 prompts x 2 samples, 32 new tokens): it
checks the path works, not that the model learns."""
import json

import pytest
import torch

from conftest import SMOLLM2_GGUF, shared_path
from rlvfast.eval import run as rlv_eval
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import loop as train_mod
from rlvfast.train.config import TrainConfig


@pytest.mark.slow
def test_smollm2_gguf_trains_resumes_saves_and_evaluates(tmp_path):
    train_data = shared_path("data", "gsm8k_train.jsonl")
    test_data = shared_path("data", "gsm8k_test.jsonl")
    if not SMOLLM2_GGUF.exists():
        pytest.skip(f"{SMOLLM2_GGUF} not present")
    out = tmp_path / "run"
    options = dict(model=str(SMOLLM2_GGUF), data=str(train_data), out=str(out), prompts_per_step=2, group_size=2,
                   max_new_tokens=32, lr=1e-6, checkpoint_every=1, log_every=1)
    train_mod.train(TrainConfig(steps=2, **options), log=lambda *a: None)
    assert ckpt.latest_checkpoint(out).name == "step-000002"
    train_mod.train(TrainConfig(steps=3, resume=True, **options), log=lambda *a: None)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")  # plain safetensors, not GGUF
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert model.config.model_type == "llama" and (out / "final" / "model.safetensors").is_file()
    ids = torch.tensor([tokenizer.encode("What is 2 + 3?")])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()

    results = rlv_eval.run(["--model", str(out / "final"), "--data", str(test_data), "--limit", "2", "--n", "2",
                            "--max-tokens", "32", "--out", str(tmp_path / "eval")])
    assert 0.0 <= results["parallel"]["pass"]["1"] <= 1.0
    assert len((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()) == 4
