"""Training from each model source the README names, through the command in a fresh process:
a hub id held by an offline Hugging Face cache (issue 14). One step, a checkpoint, OUT/final
that `transformers` loads, then `--resume` of the same run for one more step (with --kl-coef,
so the resumed run loads its KL reference from the id its checkpoint recorded).

Not here: hub-id loading alone (tests/models/test_models.py), GGUF and folder training
(test_real_model.py, test_loop.py)."""
import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import fake_hub_cache, offline_hub_env

from rlvfast.models import TinyModelConfig, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = ["--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4",
            "--micro-batch", "4", "--eval-problems", "0", "--checkpoint-every", "1", "--lr", "1e-2",
            "--warmup", "0", "--lr-schedule", "constant",  # constant: --resume extends --steps, same lr
            "--kl-coef", "0.1"]  # the KL reference is the start: --resume loads the hub id stored in the checkpoint


def run_train(args: list[str], hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**offline_hub_env(hf_home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rlvfast.train", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict of the model folder, loaded by transformers itself (not by rlvfast)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def test_a_hub_id_trains_from_the_offline_cache_and_resumes(tmp_path):
    model_dir = build_tiny_model(tmp_path / "m", TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2,
                                                                intermediate_size=64))
    fake_hub_cache(tmp_path / "hf", "org/name", model_dir)
    work = tmp_path / "work"  # the cwd holds no org/name folder: the id must come from the cache
    work.mkdir()
    out = work / "OUT"
    first = run_train(["--model", "org/name", "--out", str(out), *TINY_RUN], tmp_path / "hf", work)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoints" / "step-000001").is_dir()
    after_one, start = weights(out / "final"), weights(model_dir)
    assert after_one.keys() == start.keys()
    assert any(not torch.equal(after_one[k], start[k]) for k in start), "one step changed no weight"

    resumed = run_train(["--out", str(out), "--resume", "--steps", "2"], tmp_path / "hf", work)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (out / "checkpoints" / "step-000002").is_dir()
    after_two = weights(out / "final")
    assert any(not torch.equal(after_two[k], after_one[k]) for k in start), "the resumed step changed no weight"
