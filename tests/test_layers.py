"""The import layers of pyproject.toml's import-linter contracts hold, and a violation fails.

Layers, top to bottom: train; eval; sampler | tasks; models | answers; ops; and kernels (the
top-level kernels/ folder, installed as rlvfast.kernels: import-linter cannot see it there, so
its imports are parsed here).
"""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under `root` (it is put first on the import path)."""
    if not Path(LINT_IMPORTS).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root), "HOME": str(root)}
    return subprocess.run([LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, bad_import, message", [
    ("ops/reference.py", "import rlvfast.train.loss", "rlvfast.ops is not allowed to import rlvfast.train"),
    ("sampler/sampling.py", "import rlvfast.tasks.grading", "rlvfast.sampler is not allowed to import rlvfast.tasks"),
    ("train/loop.py", "import rlvfast.sampler.runner", "rlvfast.train is not allowed to import rlvfast.sampler.runner"),
])
def test_a_violation_breaks_the_contract(tmp_path, module, bad_import, message):
    shutil.copytree(ROOT / "rlvfast", tmp_path / "rlvfast", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "rlvfast" / module
    path.write_text(path.read_text() + f"\n{bad_import}  # a layering violation\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout


def test_kernels_import_nothing_of_rlvfast_but_kernels():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name == "rlvfast" or name.startswith("rlvfast."):
                    assert name.startswith("rlvfast.kernels"), f"{path.name} imports {name}"
