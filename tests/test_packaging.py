"""setup.py's requirements: torch is a range that keeps a user's own build (issue 14)."""
import ast
from pathlib import Path

from packaging.requirements import Requirement

SETUP = Path(__file__).resolve().parent.parent / "setup.py"


def install_requires() -> dict[str, Requirement]:
    tree = ast.parse(SETUP.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return {(r := Requirement(ast.literal_eval(elt))).name: r for elt in node.value.elts}
    raise AssertionError("no install_requires in setup.py")


def test_torch_is_a_range_holding_the_cpu_and_gpu_builds():
    torch = install_requires()["torch"].specifier
    assert not any(spec.operator in ("==", "===") for spec in torch), torch
    for version in ("2.11.0", "2.13.0", "2.11.0+cu130"):
        assert torch.contains(version, prereleases=False), (version, torch)
    assert not torch.contains("3.0.0")
