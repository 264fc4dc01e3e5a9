"""`python -m rlvfast.info` says which backend `auto` picks per op, for CPU and for CUDA tensors."""
import subprocess
import sys
from pathlib import Path

import rlvfast.ops as ops
from rlvfast import _ext, info

ROOT = Path(__file__).resolve().parents[1]


def _auto_lines(text: str) -> dict[str, list[str]]:
    lines = text.split("backend='auto' picks")[1].splitlines()[2:]
    return {parts[0]: parts[1:] for parts in (line.split() for line in lines) if parts and parts[0] in ops.OP_BACKENDS}


def test_prints_auto_per_op_for_cpu_and_cuda_tensors(monkeypatch, capsys):
    monkeypatch.setattr(_ext, "has_cpp", lambda: True)
    monkeypatch.setattr(_ext, "triton_usable", lambda device: device.type == "cuda")
    info.main()
    out = capsys.readouterr().out
    assert _auto_lines(out) == {op: ["cpp", "triton"] for op in ops.OP_BACKENDS}
    assert info.auto_report()["policy_loss"] == {"cpu": "cpp", "cuda": "triton"}


def test_without_triton_or_cpp_everything_is_the_reference(monkeypatch, capsys):
    monkeypatch.setattr(_ext, "has_cpp", lambda: False)
    monkeypatch.setattr(_ext, "triton_usable", lambda device: False)
    info.main()
    assert _auto_lines(capsys.readouterr().out) == {op: ["reference", "reference"] for op in ops.OP_BACKENDS}


def test_the_cuda_op_note_shows_where_it_is_built(monkeypatch, capsys):
    monkeypatch.setattr(_ext, "has_cuda_ops", lambda: True)
    monkeypatch.setattr(_ext, "triton_usable", lambda device: device.type == "cuda")
    info.main()
    out = capsys.readouterr().out
    assert _auto_lines(out)["group_advantages"][1] == "triton"
    assert "the CUDA C++ group_advantages runs only with backend='cuda'" in out


def test_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "rlvfast.info"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = _auto_lines(result.stdout)
    assert set(lines) == set(ops.OP_BACKENDS)
    for cpu_pick, cuda_pick in lines.values():
        assert cpu_pick in ("cpp", "reference") and cuda_pick in ("triton", "reference")
