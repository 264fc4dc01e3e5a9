"""setup.py's metadata (issue 14): torch is a range that keeps a user's own build, the console
scripts run the same functions as `python -m`, Python 3.10-3.12. The built wheel itself is
checked by .ci/wheel_check (too slow for the suite: it builds the C++ ops and makes venvs)."""
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


def setup_keyword(name: str):
    """The literal value of setup(name=...) in setup.py."""
    for node in ast.walk(ast.parse(SETUP.read_text())):
        if isinstance(node, ast.keyword) and node.arg == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"no {name}= in setup.py")


def test_console_scripts_run_the_same_main_as_python_m():
    from importlib.metadata import EntryPoint

    entries = [EntryPoint(*map(str.strip, line.split("=")), "console_scripts")
               for line in setup_keyword("entry_points")["console_scripts"]]
    scripts = {entry.name: entry for entry in entries}
    assert sorted(scripts) == ["rlvfast-eval", "rlvfast-info", "rlvfast-pretrain", "rlvfast-train"]
    import rlvfast.eval.run
    import rlvfast.info
    import rlvfast.pretrain
    import rlvfast.train.loop

    # the functions rlvfast/train/__main__.py, rlvfast/eval/__main__.py and `python -m rlvfast.info` call
    assert scripts["rlvfast-train"].load() is rlvfast.train.loop.main
    assert scripts["rlvfast-eval"].load() is rlvfast.eval.run.command
    assert scripts["rlvfast-info"].load() is rlvfast.info.main
    assert scripts["rlvfast-pretrain"].load() is rlvfast.pretrain.command
    assert "raise SystemExit(command())" in (SETUP.parent / "rlvfast" / "pretrain.py").read_text()
    for module in ("train", "eval"):
        main_py = (SETUP.parent / "rlvfast" / module / "__main__.py").read_text()
        assert f"sys.exit({scripts[f'rlvfast-{module}'].attr}())" in main_py, module


def test_python_versions_3_10_to_3_12():
    assert setup_keyword("python_requires") == ">=3.10"
    classifiers = setup_keyword("classifiers")
    assert [c for c in classifiers if c.startswith("Programming Language :: Python :: 3.")] == [
        f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12)]
