"""--report-to (rlvfast/train/trackers.py) on a micro model (1 layer, hidden 32, 8 new tokens,
2 steps): TensorBoard's scalars equal metrics.jsonl's and a --resume leaves one value per step;
the comparison's base method logs into its own directory; wandb and Trackio (fake modules in
sys.modules) get the project, name, config and each step's values, the same run on --resume, and
finish even when the run fails; unknown names and missing packages are errors naming them."""
import importlib.machinery
import json
import math
import sys
import types

import pytest

from rlvfast.cli import UserError
from rlvfast.train import checkpoint as ckpt
from rlvfast.train import loop as train_mod
from rlvfast.train import trackers
from rlvfast.train.config import TrainConfig, parse_config


def config(micro_dir, out, **overrides) -> TrainConfig:
    values = dict(model=str(micro_dir), out=str(out), steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8,
                  micro_batch=5, eval_problems=0, verify_prompt="\nOK?\n", checkpoint_every=1, lr=1e-2, warmup=0,
                  lr_schedule="constant")
    values.update(overrides)
    return TrainConfig(**values)


def quiet(*args):
    pass


def read_metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def numbers(metrics: dict) -> dict:
    """What a tracker gets of a metrics.jsonl line: its finite numbers but the step."""
    return {k: v for k, v in metrics.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# ----------------------------------------------------------------------------- tensorboard
def test_tensorboard_scalars_equal_the_metrics_lines(micro_dir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    summary = train_mod.train(config(micro_dir, out, report_to=["tensorboard"]), log=quiet)
    logged = scalars(out / trackers.TENSORBOARD_DIR)
    lines = read_metrics(out)
    step_keys = set(numbers(lines[0]))
    assert {"reward", "loss/policy", "loss/verifier", "grad_norm", "lr", "verifier/accuracy"} <= step_keys
    assert set(logged) == step_keys | {"wall_seconds"}  # the summary's one number without a table
    for key in step_keys:
        expected = [(m["step"], pytest.approx(numbers(m)[key], rel=1e-6, abs=1e-30)) for m in lines]
        assert logged[key] == expected, key  # float32 in the event file
    assert logged["wall_seconds"] == [(2, pytest.approx(summary["wall_seconds"], rel=1e-6))]


def test_tensorboard_resume_keeps_one_value_per_step(micro_dir, tmp_path):
    """An interrupted run: it logged steps 1 and 2, its last checkpoint is step 1. The resume
    logs step 2 again; TensorBoard shows the new value only."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, report_to=["tensorboard"]), log=quiet)
    ckpt.write_marker(out, "step-000001")
    train_mod.train(config(micro_dir, out, report_to=["tensorboard"], steps=3, resume=True), log=quiet)
    logged = scalars(out / trackers.TENSORBOARD_DIR)
    lines = read_metrics(out)
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert logged["grad_norm"] == [(m["step"], pytest.approx(m["grad_norm"], rel=1e-6)) for m in lines]
    assert [step for step, _ in logged["wall_seconds"]] == [3]  # the first run's, at step 2, purged too


def test_the_base_method_logs_into_its_own_directory(micro_dir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    cfg = config(micro_dir, out, report_to=["tensorboard"], eval_problems=2, eval_samples=2)
    assert cfg.is_comparison
    train_mod.train(cfg, log=quiet)
    base = scalars(out / "base_method" / trackers.TENSORBOARD_DIR)
    rlv = scalars(out / trackers.TENSORBOARD_DIR)
    base_lines, rlv_lines = read_metrics(out / "base_method"), read_metrics(out)
    assert base["loss/verifier"] == [(m["step"], pytest.approx(m["loss/verifier"], rel=1e-6)) for m in base_lines]
    assert rlv["loss/verifier"] == [(m["step"], pytest.approx(m["loss/verifier"], rel=1e-6)) for m in rlv_lines]
    assert "wall_seconds" in rlv and "wall_seconds" not in base  # the comparison's numbers go with RL^V


# ----------------------------------------------------------------------------- wandb and trackio, faked
class FakeRun:
    def __init__(self, calls: list):
        self.calls = calls
        self.summary = types.SimpleNamespace(update=lambda values: calls.append(("summary", values)))

    def log(self, values, step):
        self.calls.append(("log", step, values))

    def finish(self):
        self.calls.append(("finish",))


def fake_module(name: str, monkeypatch) -> tuple[types.ModuleType, list]:
    """A module `name` in sys.modules (with a spec, so find_spec finds it) that records its calls."""
    module, calls = types.ModuleType(name), []
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    monkeypatch.setitem(sys.modules, name, module)
    return module, calls


@pytest.fixture()
def fake_wandb(monkeypatch):
    wandb, calls = fake_module("wandb", monkeypatch)

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun(calls)

    wandb.init = init
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return calls


@pytest.fixture()
def fake_trackio(monkeypatch):
    trackio, calls = fake_module("trackio", monkeypatch)
    run = FakeRun(calls)
    trackio.init = lambda **kwargs: calls.append(("init", kwargs))
    trackio.log, trackio.finish = run.log, run.finish
    monkeypatch.delenv("TRACKIO_PROJECT", raising=False)
    return calls


def test_wandb_gets_the_project_config_and_every_step(micro_dir, tmp_path, fake_wandb):
    out = tmp_path / "run"
    cfg = config(micro_dir, out, report_to=["wandb"])
    summary = train_mod.train(cfg, log=quiet)
    (init, *logs, final, finish) = fake_wandb
    run_id = json.loads((out / trackers.IDS_FILE).read_text())["wandb"]
    assert init == ("init", {"project": "rlvfast", "name": str(out), "id": run_id, "resume": "allow",
                             "dir": str(out), "config": cfg.to_dict()})
    assert init[1]["config"]["report_to"] == ["wandb"]
    assert logs == [("log", m["step"], numbers(m)) for m in read_metrics(out)]
    assert final == ("summary", {"wall_seconds": summary["wall_seconds"]})
    assert finish == ("finish",)


def test_wandb_resume_continues_the_same_run_in_the_env_project(micro_dir, tmp_path, fake_wandb, monkeypatch):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, report_to=["wandb"]), log=quiet)
    first_id = fake_wandb[0][1]["id"]
    fake_wandb.clear()
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    train_mod.train(config(micro_dir, out, report_to=["wandb"], steps=3, resume=True), log=quiet)
    init = fake_wandb[0][1]
    assert (init["id"], init["project"], init["resume"]) == (first_id, "mine", "allow")
    assert [call[1] for call in fake_wandb if call[0] == "log"] == [3]


def test_a_fresh_run_starts_a_new_wandb_run(micro_dir, tmp_path, fake_wandb):
    out = tmp_path / "run"
    train_mod.train(config(micro_dir, out, report_to=["wandb"]), log=quiet)
    train_mod.train(config(micro_dir, out, report_to=["wandb"], overwrite=True), log=quiet)
    first, second = [call[1]["id"] for call in fake_wandb if call[0] == "init"]
    assert first != second


def test_wandb_finishes_when_the_run_fails(micro_dir, tmp_path, fake_wandb, monkeypatch):
    def fail(*args):
        raise RuntimeError("injected")

    monkeypatch.setattr(train_mod, "rl_step", fail)
    with pytest.raises(RuntimeError, match="injected"):
        train_mod.train(config(micro_dir, tmp_path / "run", report_to=["wandb"]), log=quiet)
    assert [call[0] for call in fake_wandb] == ["init", "finish"]


def test_trackio_gets_the_project_name_config_and_every_step(micro_dir, tmp_path, fake_trackio):
    out = tmp_path / "run"
    cfg = config(micro_dir, out, report_to=["trackio"])
    summary = train_mod.train(cfg, log=quiet)
    (init, *logs, final, finish) = fake_trackio
    name = json.loads((out / trackers.IDS_FILE).read_text())["trackio"]
    assert name.startswith("run-")
    assert init == ("init", {"project": "rlvfast", "name": name, "config": cfg.to_dict(), "resume": "allow"})
    assert logs == [("log", m["step"], numbers(m)) for m in read_metrics(out)]
    assert final == ("log", 2, {"wall_seconds": summary["wall_seconds"]})
    assert finish == ("finish",)


# ----------------------------------------------------------------------------- the option
@pytest.mark.parametrize("name", ["tensorboard", "wandb", "trackio"])
def test_a_missing_package_is_an_error_with_the_pip_line(name, monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda module: None if module == name else real(module))
    with pytest.raises(UserError) as error:
        TrainConfig(report_to=[name])
    assert str(error.value) == f"--report-to {name} needs the {name} package: pip install {name}"


def test_an_unknown_tracker_is_an_error_naming_it_and_the_choices():
    with pytest.raises(UserError) as error:
        TrainConfig(report_to=["tensorboard", "mlflow"])
    assert str(error.value) == "--report-to: unknown tracker 'mlflow'; choose from none, tensorboard, wandb, trackio"
    with pytest.raises(UserError, match="--report-to none cannot go with other trackers, got none wandb"):
        TrainConfig(report_to=["none", "wandb"])


def test_the_flag_takes_a_list_as_trl_does(fake_wandb):
    pytest.importorskip("tensorboard")
    assert parse_config([]).report_to == ["none"]
    assert parse_config(["--report-to", "tensorboard", "wandb", "tensorboard"]).report_to == ["tensorboard", "wandb"]


def test_loggable_keeps_finite_numbers_and_flattens():
    values = {"a": 1, "b": float("nan"), "c": None, "d": True, "e": "x", "f": {"g": 0.5, "h": float("inf")}, "i": [1]}
    assert trackers.loggable(values) == {"a": 1, "f/g": 0.5}


def test_every_tracker_closes_when_one_fails_to():
    closed = []

    class Tracker:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)
            if self.name == "first":
                raise OSError("disk full (injected)")

    with pytest.raises(OSError, match="disk full"):
        trackers.Trackers([Tracker("first"), Tracker("second")]).close()
    assert closed == ["first", "second"]
