"""Atomic checkpoints: the marker names only complete checkpoints, crashes mid-write leave the
previous one whole, keep-last prunes only after the new one is durable, models reload.
Save failures raise CheckpointError naming the last complete checkpoint; OUT/final is replaced
atomically (or repaired at the next save) and crash leftovers are cleaned."""
import os
import random

import numpy as np
import pytest
import torch

from rlvfast.train import checkpoint as ckpt
from rlvfast.models import TinyModelConfig, build_tiny_model, load_model


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("ckpt") / "m",
                            TinyModelConfig(num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32))
    return load_model(path)


def _state(step: int) -> dict:
    return {"step": step, "rng": ckpt.rng_state(), "payload": torch.arange(step)}


def test_save_writes_model_state_and_marker(micro, tmp_path):
    model, tok = micro
    path = ckpt.save_checkpoint(tmp_path, 5, model, tok, _state(5))
    assert path == tmp_path / "checkpoints" / "step-000005"
    assert (tmp_path / "latest").read_text().strip() == "step-000005"
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert ckpt.load_trainer_state(path)["step"] == 5
    from transformers import AutoModelForCausalLM
    reloaded = AutoModelForCausalLM.from_pretrained(path)  # a plain HF directory with safetensors
    assert (path / "model.safetensors").is_file()
    for (name, p), q in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(p, q), name
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_prunes_old_checkpoints_only_after_the_new_one(micro, tmp_path):
    model, tok = micro
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, tok, _state(step), keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000003"]
    ckpt.save_checkpoint(tmp_path, 4, model, tok, _state(4), keep_last=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004"]


def test_crash_while_writing_keeps_the_previous_checkpoint(micro, tmp_path, monkeypatch):
    model, tok = micro
    ckpt.save_checkpoint(tmp_path, 1, model, tok, _state(1), keep_last=1)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.torch, "save", crash)  # model files written, trainer state fails
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint step-000002 not saved: writing .*\.tmp-step-000002-"
                       r".* failed: OSError: disk full \(simulated\); the last complete checkpoint is "
                       r".*checkpoints/step-000001$"):
        ckpt.save_checkpoint(tmp_path, 2, model, tok, _state(2), keep_last=1)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000001"
    assert ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path))["step"] == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001"]


def test_crash_before_the_marker_is_ignored_by_resume(micro, tmp_path, monkeypatch):
    model, tok = micro
    ckpt.save_checkpoint(tmp_path, 1, model, tok, _state(1), keep_last=1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the rename, before the marker

    monkeypatch.setattr(ckpt, "write_marker", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, model, tok, _state(2), keep_last=1)
    monkeypatch.undo()
    # step-000002 is on disk but the marker never named it: resume trusts only the marker,
    # and the previous checkpoint was not pruned.
    assert (tmp_path / "checkpoints" / "step-000002").is_dir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000001"
    # the next save does not reuse the unmarked directory's name
    path = ckpt.save_checkpoint(tmp_path, 2, model, tok, _state(2), keep_last=1)
    assert path.name == "step-000002.1" and ckpt.latest_checkpoint(tmp_path) == path


def test_no_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint to resume from"):
        ckpt.latest_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("step-000009\n")
    with pytest.raises(ckpt.CheckpointError, match="missing or incomplete"):
        ckpt.latest_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.latest_checkpoint(tmp_path)


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = ckpt.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    ckpt.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_save_final_replaces_the_previous_final(micro, tmp_path):
    model, tok = micro
    ckpt.save_final(tmp_path, model, tok)
    (tmp_path / "final" / "stale.txt").write_text("old")
    final = ckpt.save_final(tmp_path, model, tok)
    assert not (final / "stale.txt").exists()
    reloaded, _ = load_model(final)
    assert torch.equal(reloaded.get_output_embeddings().weight, model.get_output_embeddings().weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_unserializable_model_is_a_checkpoint_error_naming_none_yet(micro, tmp_path, monkeypatch):
    model, tok = micro

    def refuse(*args, **kwargs):
        raise ValueError("The model is quantized with gguf and is not serializable")

    monkeypatch.setattr(model, "save_pretrained", refuse)
    with pytest.raises(ckpt.CheckpointError, match="step-000001 not saved: .*not serializable; the last "
                                                   "complete checkpoint is none yet"):
        ckpt.save_checkpoint(tmp_path, 1, model, tok, _state(1))
    with pytest.raises(ckpt.CheckpointError, match=r"final model not saved: writing .* failed: ValueError: .*; "
                                                   r".*final is absent; the last complete checkpoint is none yet"):
        ckpt.save_final(tmp_path, model, tok)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints"]  # no temp dirs left


def _old_final(out):
    """Marks the current OUT/final so a test can tell whether it survived."""
    (out / "final" / "old.txt").write_text("old")


def _assert_old_final_loads(out, model):
    assert (out / "final" / "old.txt").read_text() == "old"
    reloaded, _ = load_model(out / "final")
    assert torch.equal(reloaded.get_output_embeddings().weight, model.get_output_embeddings().weight)


def test_failed_write_keeps_the_previous_final(micro, tmp_path, monkeypatch):
    model, tok = micro
    ckpt.save_checkpoint(tmp_path, 3, model, tok, _state(3))
    ckpt.save_final(tmp_path, model, tok)
    _old_final(tmp_path)
    monkeypatch.setattr(tok, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(ckpt.CheckpointError, match=r"final model not saved: writing .* failed: OSError: disk full; "
                                                   r".*final is unchanged; the last complete checkpoint is "
                                                   r".*checkpoints/step-000003$"):
        ckpt.save_final(tmp_path, model, tok)
    _assert_old_final_loads(tmp_path, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "final", "latest"]


def _fail_on_calls(monkeypatch, calls: set[int]):
    """os.rename raises on the given (1-based) calls, as a crash there would stop it."""
    real, count = os.rename, [0]

    def rename(src, dst):
        count[0] += 1
        if count[0] in calls:
            raise OSError(f"crash at rename {count[0]} (simulated)")
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)


def test_error_between_the_two_renames_keeps_final(micro, tmp_path, monkeypatch):
    model, tok = micro
    ckpt.save_final(tmp_path, model, tok)
    _old_final(tmp_path)
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False, raising=False)  # a filesystem without it
    _fail_on_calls(monkeypatch, {2})  # final -> .old-final-* done, .tmp-final-* -> final fails
    with pytest.raises(ckpt.CheckpointError, match="crash at rename 2"):
        ckpt.save_final(tmp_path, model, tok)
    monkeypatch.undo()
    _assert_old_final_loads(tmp_path, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_crash_between_the_two_renames_is_repaired_at_the_next_save(micro, tmp_path, monkeypatch):
    model, tok = micro
    ckpt.save_final(tmp_path, model, tok)
    _old_final(tmp_path)
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False, raising=False)
    _fail_on_calls(monkeypatch, {2, 3})  # the move back fails too, as if the process had died
    with pytest.raises(ckpt.CheckpointError, match="final is absent"):
        ckpt.save_final(tmp_path, model, tok)
    monkeypatch.undo()
    assert not (tmp_path / "final").exists() and len(list(tmp_path.glob(".old-final-*"))) == 1
    # what else crashed writes leave behind
    (tmp_path / ".tmp-final-dead").mkdir()
    (tmp_path / ".latest-dead").write_text("step-000009\n")
    (tmp_path / "checkpoints" / ".tmp-step-000009-dead").mkdir(parents=True)
    removed = ckpt.clean_stale(tmp_path)  # what the next save (or the start of a run) does first
    assert sorted(p.name for p in removed) == [".latest-dead", ".tmp-final-dead", ".tmp-step-000009-dead"]
    _assert_old_final_loads(tmp_path, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "final"]
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_next_save_cleans_leftovers_of_a_crash_after_the_swap(micro, tmp_path):
    model, tok = micro
    ckpt.save_final(tmp_path, model, tok)
    for name in (".tmp-final-x1", ".old-final-x2"):  # old copies a crash before their rmtree leaves
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"0" * 100)
    ckpt.save_checkpoint(tmp_path, 1, model, tok, _state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "final", "latest"]


def test_exchange_swaps_two_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "from_a").write_text("")
    if not ckpt._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here (the fallback tests cover it)")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["from_a"] and not list((tmp_path / "a").iterdir())


def test_saved_files_are_readable_by_others_as_the_umask_allows(micro, tmp_path):
    model, tok = micro  # transformers writes model.safetensors 0600
    mask = os.umask(0o022)
    try:
        paths = [ckpt.save_checkpoint(tmp_path, 1, model, tok, _state(1)), ckpt.save_final(tmp_path, model, tok)]
    finally:
        os.umask(mask)
    modes = {f"{p.name}/{f.name}": oct(f.stat().st_mode & 0o777) for p in paths for f in p.iterdir()}
    assert "step-000001/model.safetensors" in modes and "final/model.safetensors" in modes
    assert {m for m in modes.values()} == {"0o644"}, modes


@pytest.mark.parametrize("bars_on", [True, False])
def test_checkpoints_save_and_load_without_bars_and_leave_the_setting(micro, tmp_path, capfd, bars_on):
    """No "Writing model shards" / "Loading weights" bar for a checkpoint's save or its load
    (stderr is no terminal here), and the user's own setting of transformers' bars is back after."""
    from transformers.utils import logging as hf_logging

    model, tok = micro
    was_on = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if bars_on else hf_logging.disable_progress_bar)()
    try:
        model.save_pretrained(tmp_path / "plain")  # the control: transformers' own save shows its bar
        assert ("Writing model shards" in capfd.readouterr().err) == bars_on
        path = ckpt.save_checkpoint(tmp_path / "run", 1, model, tok, _state(1))
        ckpt.save_final(tmp_path / "run", model, tok)
        load_model(path)
        assert hf_logging.is_progress_bar_enabled() == bars_on
    finally:
        (hf_logging.enable_progress_bar if was_on else hf_logging.disable_progress_bar)()
    err = capfd.readouterr().err
    assert "Writing" not in err and "Loading" not in err, err
