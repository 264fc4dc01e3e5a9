"""`python -m rlvfast.pretrain`: one-line argument errors (exit 2), the card it writes (fields,
model config = HF config, evaluation, overlap), replacing only its own earlier output."""
import json

import pytest

from rlvfast.cli import run_command
from rlvfast.models import TinyModelConfig, read_card
from rlvfast.pretrain import main, pretrain
from rlvfast.train.warm_start import WARM_START_VERSION, WarmStartConfig

MICRO = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)


def micro_config(**kw) -> WarmStartConfig:
    return WarmStartConfig(**{"steps": 2, "batch_size": 4, "verify_rows": 2, "warmup": 1, "verifier_steps": 2,
                              "verifier_solution_rows": 2, "verifier_pairs": 2, "model": MICRO, **kw})


@pytest.mark.parametrize("argv, message", [
    (["--out", "{tmp}/m", "--steps", "0"], "rlvfast.pretrain: error: --steps must be a positive int, got 0"),
    (["--out", "{tmp}/m", "--verifier-steps", "-1"],
     "rlvfast.pretrain: error: --verifier-steps must be an int >= 0, got -1"),
    (["--out", "{tmp}/m", "--seed", "-3"], "rlvfast.pretrain: error: --seed must be >= 0, got -3"),
    (["--out", "{tmp}/m", "--eval-problems", "-1"], "rlvfast.pretrain: error: --eval-problems must be >= 0, got -1"),
    (["--out", "{tmp}/m", "--steps", "many"], "rlvfast.pretrain: error: argument --steps: invalid int value: 'many'"),
    (["--steps", "3"], "rlvfast.pretrain: error: the following arguments are required: --out"),
    (["--out", "{tmp}/full"], "rlvfast.pretrain: error: --out {tmp}/full: a non-empty directory without card.json"),
])
def test_argument_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    status = _run([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith(message.replace("{tmp}", str(tmp_path))), err
    assert not [line for line in err if "Traceback" in line]
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    assert not (tmp_path / "m").exists()


def _run(argv: list[str]) -> int:
    """The command's exit status (argparse's errors leave by SystemExit, the others by run_command)."""
    try:
        return run_command(main, "rlvfast.pretrain", argv)
    except SystemExit as e:
        return e.code


def test_the_card_records_training_model_evaluation_and_overlap(tmp_path):
    config = micro_config(seed=3)
    lines = []
    card = pretrain(tmp_path / "base", config, eval_problems=3, command="python -m rlvfast.pretrain --out X",
                    log=lines.append)
    out = tmp_path / "base"
    assert read_card(out) == card
    hf = json.loads((out / "config.json").read_text())
    m = card["model"]
    assert (m["num_layers"], m["hidden_size"], m["num_heads"], m["vocab_size"]) == (1, 32, 2, hf["vocab_size"])
    assert m["num_parameters"] > 0
    t = card["training"]
    assert (t["steps"], t["verifier_steps"], t["seed"], t["rows_per_step"]) == (2, 2, 3, 6)
    assert t["warm_start_version"] == WARM_START_VERSION and t["cache_key"] == config.cache_key()
    assert WarmStartConfig(**t["warm_start_config"]) == config
    assert t["seconds"] > 0 and "error_rate" in t["data"]
    e = card["evaluation"]
    assert (e["num_problems"], e["num_samples"], e["seed"], e["max_tokens"]) == (3, 4, 1, 48)
    for split in ("test", "hard"):
        result = e["results"][split]
        assert {"pass@1", "verifier_balanced_accuracy", "verifier_auc"} <= set(result)
        assert result["num_problems"] == 3 and 0 <= result["pass@1"] <= 1
        overlap = card["held_out_overlap"]["splits"][split]
        assert overlap == {"of": 3, "seen_in_training": 0}  # held out by construction, counted by replay
    readme = (out / "README.md").read_text()
    for text in ("python -m rlvfast.pretrain --out X", "| test |", "| hard |", "judge AUC", "which no training draw takes"):
        assert text in readme
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temporary folder left
    assert lines[-1].startswith(f"pretrain: wrote {out}")


def test_an_earlier_output_is_replaced(tmp_path):
    out = tmp_path / "base"
    pretrain(out, micro_config(), eval_problems=0, log=lambda _: None)
    first = (out / "model.safetensors").read_bytes()
    card = pretrain(out, micro_config(seed=1), eval_problems=0, log=lambda _: None)
    assert card["evaluation"] is None and card["training"]["seed"] == 1
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_the_command_with_the_default_model(tmp_path, capsys):
    """The command end to end on the default 3 x 128 model, 1 step, 2 problems per split."""
    status = _run(["--out", str(tmp_path / "b"), "--steps", "1", "--verifier-steps", "1",
                   "--eval-problems", "2", "--seed", "5"])
    assert status == 0
    card = read_card(tmp_path / "b")
    assert card["command"] == "python -m rlvfast.pretrain --out DIR --steps 1 --verifier-steps 1 --seed 5"
    assert (card["model"]["num_layers"], card["model"]["hidden_size"]) == (3, 128)
    assert card["evaluation"]["results"]["hard"]["num_problems"] == 2
