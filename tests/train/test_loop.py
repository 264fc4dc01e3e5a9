"""The training loop end to end on a micro model (1 layer, hidden 32, 8 new tokens): each
algorithm runs two steps, resume is exact and refuses changed options, NaN steps are skipped
(and logged as null) then stop the run, bad inputs fail before training, the run directory
is locked and never mixes runs, checkpoint failures do not end the run, custom rewards and
config files work. The command's edge (one-line errors, options, --help) is in test_train_cli.py."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rlvfast
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import loop as train_mod
from rlvfast.train import report
from rlvfast.cli import UserError
from rlvfast.models import load_model
from rlvfast.train.config import TrainConfig, parse_config
from rlvfast.train.warm_start import WarmStartConfig

REWARD_MODULE = '''
def parity(prompts, completions, completion_ids, answer, **columns):
    """1 when the sampled ids sum to an even number: varied rewards even from a random model."""
    assert len(prompts) == len(completions) == len(completion_ids) == len(answer)
    return [float(sum(ids) % 2 == 0) for ids in completion_ids]

def some_none(prompts, completions, completion_ids, **columns):
    return [None if i % 3 == 0 else float(sum(ids) % 2 == 0) for i, ids in enumerate(completion_ids)]

def all_none(prompts, completions, **columns):
    return [None] * len(completions)
'''


@pytest.fixture()
def rewards_module(tmp_path, monkeypatch):
    (tmp_path / "rlvfast_test_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rlvfast_test_rewards"


def config(micro_dir, out, **overrides) -> TrainConfig:
    values = dict(model=str(micro_dir), out=str(out), steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8,
                  micro_batch=5, eval_problems=0, verify_prompt="\nOK?\n", checkpoint_every=1, lr=1e-2, warmup=0,
                  lr_schedule="constant")  # constant: --resume may extend --steps without changing the lr
    values.update(overrides)
    return TrainConfig(**values)


def strict_json(text: str):
    """json.loads that rejects NaN and Infinity, as jq and most other parsers do."""
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def read_metrics(out) -> list[dict]:
    return [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def quiet(*args):
    pass


def test_rollout_correction_logs_the_capped_fraction_and_changes_nothing_on_the_cpu(micro_dir, tmp_path,
                                                                                rewards_module):
    """On the CPU the sampler's and the trainer's log-probs agree to ~1e-7, so with the cap at
    3 no token is capped and the run equals the uncorrected one, metric for metric."""
    plain, corrected = tmp_path / "plain", tmp_path / "corrected"
    options = dict(reward=f"{rewards_module}:parity", seed=1)
    train_mod.train(config(micro_dir, plain, **options), log=quiet)
    train_mod.train(config(micro_dir, corrected, rollout_correction=3.0, **options), log=quiet)
    for p, c in zip(read_metrics(plain), read_metrics(corrected)):
        assert "rollout/frac_capped" not in p and c["rollout/frac_capped"] == 0.0
        assert c["loss/policy"] == pytest.approx(p["loss/policy"], rel=1e-6, abs=1e-9)
        assert c["grad_norm"] == pytest.approx(p["grad_norm"], rel=1e-6)


@pytest.mark.parametrize("algo", ["grpo", "rloo", "drgrpo"])
def test_two_steps_of_each_algorithm(micro_dir, tmp_path, rewards_module, algo):
    out = tmp_path / "run"
    # seed 1: with the held-out split (synthetic.is_held_out) seed 0 draws problems whose 8 samples all have even parity
    train_mod.train(config(micro_dir, out, algo=algo, reward=f"{rewards_module}:parity", seed=1), log=quiet)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert not m["skipped"]
        assert 0.0 <= m["reward"] <= 1.0 and m["reward_std"] > 0  # the parity reward varies
        assert math.isfinite(m["loss/policy"]) and m["loss/verifier"] > 0 and m["grad_norm"] > 0
        # on-policy: the trainer's log-probs equal the sampler's up to float32 numerics
        assert m["old_logprob_abs_diff"] < 1e-4
        assert m["clip_ratio"] == 0.0
        assert m["verifier/accuracy"] is not None
        for key in ("frac_reward_zero_std", "completions/clipped_ratio", "entropy", "kl", "tokens_per_second",
                    "time/sampling", "time/grading", "time/update", "grader/timeouts"):
            assert key in m, key
    assert ckpt.latest_checkpoint(out).name == "step-000002"
    final, _ = load_model(out / "final")
    start, _ = load_model(micro_dir)
    assert not torch.equal(final.get_output_embeddings().weight, start.get_output_embeddings().weight)
    summary = strict_json((out / "summary.json").read_text())
    assert summary["wall_seconds"] > 0 and "eval" not in summary  # eval_problems=0: no table


def test_verifier_coef_zero_trains_no_verifier(micro_dir, tmp_path, rewards_module):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, steps=1, verifier_coef=0.0, reward=f"{rewards_module}:parity"), log=quiet)
    (m,) = read_metrics(out)
    assert m["loss/verifier"] == 0.0 and m["loss"] == m["loss/policy"]


def test_gradient_checkpointing_trains_the_same_model(micro_dir, tmp_path, rewards_module):
    reward = f"{rewards_module}:parity"
    for name, flag in (("plain", False), ("checkpointed", True)):
        train_mod.train(config(micro_dir, tmp_path / name, reward=reward, seed=1, gradient_checkpointing=flag),
                        log=quiet)
    a, b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "checkpointed")
    assert [(m["loss"], m["grad_norm"]) for m in a] == [(m["loss"], m["grad_norm"]) for m in b]
    wa, _ = load_model(tmp_path / "plain" / "final")
    wb, _ = load_model(tmp_path / "checkpointed" / "final")
    for (name, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), name


def test_resume_continues_exactly(micro_dir, tmp_path, rewards_module):
    reward = f"{rewards_module}:parity"
    full, part = tmp_path / "full", tmp_path / "part"
    train_mod.train(config(micro_dir, full, steps=4, checkpoint_every=2, reward=reward), log=quiet)
    train_mod.train(config(micro_dir, part, steps=2, checkpoint_every=2, reward=reward), log=quiet)
    train_mod.train(config(micro_dir, part, steps=4, checkpoint_every=2, reward=reward, resume=True), log=quiet)
    a, b = read_metrics(full), read_metrics(part)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    keys = ("loss", "loss/policy", "loss/verifier", "grad_norm", "reward", "entropy", "lr")
    for ma, mb in zip(a, b):
        assert {k: ma[k] for k in keys} == {k: mb[k] for k in keys}, ma["step"]
    wa, _ = load_model(full / "final")
    wb, _ = load_model(part / "final")
    for (name, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.equal(p, q), name


def _nan_on_calls(monkeypatch, calls: set[int] | None):
    """Make rlv_loss return a NaN loss on the given call numbers (None: always)."""
    real = train_mod.rlv_loss
    count = {"n": 0}

    def patched(*args, **kwargs):
        out = real(*args, **kwargs)
        count["n"] += 1
        if calls is None or count["n"] in calls:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train_mod, "rlv_loss", patched)


def test_nan_step_is_skipped_and_the_run_goes_on(micro_dir, tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, {1})  # the first micro-batch of step 1
    out = tmp_path / "run"
    before, _ = load_model(micro_dir)
    train_mod.train(config(micro_dir, out, steps=2), log=quiet)
    m1, m2 = read_metrics(out)
    # the NaN loss is written as null (strict JSON); skipped and num_bad_steps say why
    assert m1["skipped"] and m1["num_bad_steps"] == 1 and m1["loss"] is None
    assert not m2["skipped"] and m2["num_bad_steps"] == 0 and math.isfinite(m2["loss"])
    after, _ = load_model(out / "final")
    assert not torch.equal(before.lm_head.weight, after.lm_head.weight)


def test_consecutive_nan_steps_stop_with_the_last_checkpoint_intact(micro_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, steps=1), log=quiet)
    good = ckpt.latest_checkpoint(out)
    _nan_on_calls(monkeypatch, None)
    with pytest.raises(train_mod.TrainingError, match="2 consecutive steps"):
        train_mod.train(config(micro_dir, out, steps=5, max_bad_steps=2, resume=True), log=quiet)
    assert ckpt.latest_checkpoint(out) == good
    assert ckpt.load_trainer_state(good)["step"] == 1
    assert [m["skipped"] for m in read_metrics(out)] == [False, True, True]


def test_bad_data_fails_before_training(micro_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="nope.jsonl"):
        train_mod.train(config(micro_dir, out, data=str(tmp_path / "nope.jsonl")), log=quiet)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?"}\n')  # no answer field: rlvfast.tasks.problems's DataError, a user error here
    with pytest.raises(UserError, match="bad.jsonl"):
        train_mod.train(config(micro_dir, out, data=str(bad)), log=quiet)
    assert not out.exists()


def test_resume_without_a_checkpoint_is_a_user_error(micro_dir, tmp_path, capsys):
    assert train_mod.main(["--model", str(micro_dir), "--out", str(tmp_path / "empty"), "--resume",
                           "--eval-problems", "0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("rlvfast.train: error: --resume: no checkpoint to resume from")
    with pytest.raises(UserError, match="no checkpoint"):
        train_mod.train(config(micro_dir, tmp_path / "empty", resume=True), log=quiet)
    assert not (tmp_path / "empty").exists()  # refused before the lock creates it


def test_none_rewards_get_no_gradient_and_no_label(micro_dir, tmp_path, rewards_module):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, steps=1, reward=f"{rewards_module}:some_none"), log=quiet)
    (m,) = read_metrics(out)
    assert m["rewards/none"] == 3  # samples 0, 3, 6 of 8
    assert math.isfinite(m["loss"]) and m["loss/verifier"] > 0


def test_bad_reward_spec_is_an_error(micro_dir, tmp_path):
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        train_mod.train(config(micro_dir, tmp_path / "r", reward="no_such_module_xyz:f"), log=quiet)


def test_kl_to_the_initial_model(micro_dir, tmp_path, rewards_module):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, kl_coef=0.1, reward=f"{rewards_module}:parity"), log=quiet)
    m1, m2 = read_metrics(out)
    assert abs(m1["kl"]) < 1e-6  # step 1: the policy is still the reference model
    assert m2["kl"] > 0


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algo: rloo\nverifier-coef: 0.5\nsteps: 7\n")
    cfg = parse_config(["--config", str(path), "--steps", "9", "--clip-high", "0.28"])
    assert (cfg.algo, cfg.verifier_coef, cfg.steps, cfg.clip_high) == ("rloo", 0.5, 9, 0.28)
    assert cfg.loss_agg == "token-mean"
    assert parse_config(["--algo", "drgrpo"]).loss_agg == "constant"  # Dr.GRPO's constant normalizer
    (tmp_path / "bad.json").write_text(json.dumps({"stepz": 3}))
    with pytest.raises(ValueError, match="stepz"):
        parse_config(["--config", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="--group-size"):
        TrainConfig(group_size=0)
    with pytest.raises(SystemExit):
        parse_config(["--algo", "ppo"])
    warm = parse_config(["--warm-start-steps", "5", "--warm-start-verifier-steps", "7"]).warm_start_config()
    assert (warm.steps, warm.verifier_steps) == (5, 7)
    assert parse_config([]).warm_start_config().cache_key() == WarmStartConfig().cache_key()  # phase 2 off
    with pytest.raises(ValueError, match="--warm-start-verifier-steps"):
        TrainConfig(warm_start_verifier_steps=-1)


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = capsys.readouterr().out
    for flag in ("--algo", "--verifier-coef", "--clip-low", "--clip-high", "--kl-coef", "--loss-agg",
                 "--group-size", "--prompts-per-step", "--micro-batch", "--ppo-epochs", "--lr", "--warmup",
                 "--max-grad-norm", "--max-new-tokens", "--temperature", "--steps", "--seed", "--model",
                 "--data", "--out", "--resume", "--reward", "--checkpoint-every", "--keep-last"):
        assert flag in text, flag


# ----------------------------------------------------------------------------- resume and the run directory
def test_resume_refuses_options_that_change_the_run(micro_dir, tmp_path, rewards_module):
    out, reward = tmp_path / "run", f"{rewards_module}:parity"
    train_mod.train(config(micro_dir, out, steps=1, reward=reward), log=quiet)
    data = tmp_path / "problems.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n')
    with pytest.raises(UserError) as error:
        train_mod.train(config(micro_dir, out, steps=2, reward=reward, resume=True, lr=1e-3, seed=1,
                               group_size=2, data=str(data)), log=quiet)
    message = str(error.value)
    for difference in ("--lr 0.001 (checkpoint: 0.01)", "--seed 1 (checkpoint: 0)",
                       "--group-size 2 (checkpoint: 4)", f"--data {data} (checkpoint: synthetic)"):
        assert difference in message, difference
    assert "--steps" not in message and "4 option(s)" in message
    assert [m["step"] for m in read_metrics(out)] == [1]  # nothing ran
    # what may change: --steps to extend, --checkpoint-every, --keep-last, the eval options
    train_mod.train(config(micro_dir, out, steps=3, reward=reward, resume=True, checkpoint_every=2,
                           keep_last=3, eval_problems=5, eval_samples=2), log=quiet)
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(out))
    assert state["step"] == 3 and state["config"]["lr"] == 1e-2 and state["config"]["steps"] == 3
    assert "data_position" not in state  # dead: the data order is a function of (seed, step)


def test_the_command_resumes_with_the_checkpoints_options(micro_dir, tmp_path, capsys):
    """`--resume` alone continues a run started with non-default options; a changed one is refused."""
    out = tmp_path / "run"
    argv = ["--model", str(micro_dir), "--out", str(out), "--prompts-per-step", "2", "--group-size", "4",
            "--max-tokens", "8", "--micro-batch", "5", "--eval-problems", "0", "--verify-prompt", "\nOK?\n",
            "--checkpoint-every", "1", "--lr", "1e-2", "--warmup", "0"]
    assert train_mod.main(argv + ["--steps", "1"]) == 0
    capsys.readouterr()
    assert train_mod.main(["--out", str(out), "--resume", "--lr", "1e-3", "--verify-prompt", "?"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"rlvfast.train: error: --resume from {out / 'checkpoints' / 'step-000001'}: 2 option(s) differ from "
        f"the checkpoint's and would change the run: --lr 0.001 (checkpoint: 0.01); --verify-prompt ? "
        f"(checkpoint: '\\nOK?\\n'). Pass the checkpoint's values, or start a new run with another --out"]
    assert train_mod.main(["--out", str(out), "--resume", "--steps", "2"]) == 0
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    saved = ckpt.load_trainer_state(ckpt.latest_checkpoint(out))["config"]
    assert (saved["model"], saved["lr"], saved["group_size"], saved["steps"]) == (str(micro_dir), 1e-2, 4, 2)


def test_resume_cannot_go_back_in_steps(micro_dir, tmp_path):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, steps=2), log=quiet)
    with pytest.raises(UserError, match="--steps 1 is below the checkpoint's step 2"):
        train_mod.train(config(micro_dir, out, steps=1, resume=True), log=quiet)


def test_a_fresh_run_into_an_old_out_is_an_error(micro_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # an older run killed before its first checkpoint: metrics, no marker
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4}\n')
    with pytest.raises(UserError, match=r"is not empty \(metrics.jsonl\).*--resume.*--overwrite"):
        train_mod.train(config(micro_dir, out, steps=2), log=quiet)
    assert len(read_metrics(out)) == 4  # untouched


def test_overwrite_clears_the_old_run_and_only_it(micro_dir, tmp_path):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, steps=3, checkpoint_every=1, keep_last=3), log=quiet)
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()  # what --report-to tensorboard / wandb left there
    (out / "trackers.json").write_text("{}")
    train_mod.train(config(micro_dir, out, steps=2, overwrite=True), log=quiet)
    assert not (out / "runs").exists() and not (out / "trackers.json").exists()
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert (out / "notes.txt").read_text() == "mine"


SECOND_RUN = "import sys; from rlvfast.train import main; sys.exit(main(sys.argv[1:]))"


def child_env() -> dict:
    """The environment of a child Python that imports the same rlvfast as this test (PYTHONPATH first)."""
    root = str(Path(rlvfast.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def test_a_second_run_into_the_same_out_fails_naming_the_first(micro_dir, tmp_path, monkeypatch):
    """While run 1 is in its first step, a real second process starts a run into the same --out."""
    out = tmp_path / "run"
    second = {}
    real_rl_step = train_mod.rl_step

    def rl_step_then_second_run(run, batch, step):
        if step == 0:
            argv = ["--model", str(micro_dir), "--out", str(out), "--steps", "1", "--eval-problems", "0"]
            second["proc"] = subprocess.run([sys.executable, "-c", SECOND_RUN, *argv], capture_output=True,
                                            text=True, timeout=300, env=child_env())
        return real_rl_step(run, batch, step)

    monkeypatch.setattr(train_mod, "rl_step", rl_step_then_second_run)
    train_mod.train(config(micro_dir, out, steps=2), log=quiet)
    proc = second["proc"]
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"rlvfast.train: error: --out {out} is in use by another run (pid {os.getpid()}, holding "
        f"{out / '.lock'}); wait for it to end or pass another --out")
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    # the lock went with the run: the directory is free again
    train_mod.train(config(micro_dir, out, steps=3, resume=True), log=quiet)


# ----------------------------------------------------------------------------- checkpoint failures
def _fail_once(monkeypatch, name: str):
    real = getattr(ckpt, name)
    calls = {"n": 0}

    def patched(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ckpt.CheckpointError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, name, patched)


def test_a_failed_checkpoint_is_logged_and_training_continues(micro_dir, tmp_path, monkeypatch):
    _fail_once(monkeypatch, "save_checkpoint")
    out, lines = tmp_path / "run", []
    train_mod.train(config(micro_dir, out, steps=2, checkpoint_every=1), log=lines.append)
    (failed,) = [line for line in lines if "checkpoint not written" in line]
    assert failed == ("step 1: checkpoint not written: disk full (injected); training continues; "
                      "the next checkpoint retries")
    assert ckpt.latest_checkpoint(out).name == "step-000002"
    assert (out / "final").is_dir()


def test_a_failed_final_save_names_the_last_checkpoint(micro_dir, tmp_path, monkeypatch):
    _fail_once(monkeypatch, "save_final")
    out = tmp_path / "run"
    with pytest.raises(train_mod.TrainingError) as error:
        train_mod.train(config(micro_dir, out, steps=2, checkpoint_every=1), log=quiet)
    assert str(error.value) == (f"the final model was not written (disk full (injected)); the last complete "
                                f"checkpoint is {out / 'checkpoints' / 'step-000002'}, the metrics are in "
                                f"{out / 'metrics.jsonl'}")


# ----------------------------------------------------------------------------- what a user sees
def test_step_lines_when_output_is_not_a_terminal(micro_dir, tmp_path, capsys):
    out, lines = tmp_path / "run", []
    train_mod.train(config(micro_dir, out, steps=3, log_every=2), log=lines.append)  # pytest: not a terminal
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/3", "3/3"]  # every 2nd step, and the last
    for key in ("reward ", "loss/policy ", "loss/verifier ", "verifier accuracy ", "(balanced "):
        assert key in steps[0], key
    assert steps[0].endswith(" s")
    err = capsys.readouterr().err
    assert "Writing model shards" not in err  # three checkpoints and the final model
    assert "Loading weights" not in err  # the model loads without a bar in a log


def test_a_reward_of_only_none_warns(micro_dir, tmp_path, rewards_module):
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="all_none returned None for every completion of a step"):
        train_mod.train(config(micro_dir, out, steps=1, reward=f"{rewards_module}:all_none"), log=quiet)
    (m,) = read_metrics(out)
    assert m["reward"] is None and m["rewards/none"] == 8


def test_table_says_n_a_and_why_best_of_n_can_trail_pass_at_1():
    result = {"num_problems": 2, "num_samples": 2, "pass@1": 0.5, "verifier_balanced_accuracy": None,
              "majority@1": 0.5, "majority@2": 0.5, "best_of_n@1": 0.5, "best_of_n@2": 0.25,
              "weighted@1": 0.5, "weighted@2": float("nan")}
    table = report.format_table({"eval": {"test": result}})  # a resumed run: no warm-start numbers
    lines = table.splitlines()
    assert lines[1] == "pass@1: warm start - -> final 0.500   verifier balanced accuracy: warm start - -> final n/a"
    assert lines[-2].split() == ["weighted", "0.500", "n/a"]
    assert lines[-1] == report.BEST_OF_N_NOTE and "highest P(\"Yes\")" in lines[-1]
