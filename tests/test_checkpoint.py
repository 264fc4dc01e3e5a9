"""Atomic checkpoints: the marker names only complete checkpoints, crashes mid-write leave the
previous one whole, keep-last prunes only after the new one is durable, models reload."""
import random

import numpy as np
import pytest
import torch

from rlvfast import checkpoint as ckpt
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
    with pytest.raises(OSError, match="simulated"):
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
