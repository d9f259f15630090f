"""The layers hold: import-linter's contracts (pyproject.toml) pass on the tree and catch an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# What the contracts read: the package, its linked folders, and the configuration.
TREE = ("encore_retention", "encore", "webhooks", "flows", "connectors", "templates", "pyproject.toml")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "250"}  # this copy first; one line per contract
    return subprocess.run(
        [str(LINT_IMPORTS), str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    copy.mkdir()
    for name in TREE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def test_the_layers_hold_on_the_tree():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward", "contract"),
    [
        ("encore/events.py", "from encore_retention.flows import engine", "The foundation imports no room"),
        ("webhooks/shopify.py", "import flask", "The receivers parse without Flask"),
        ("flows/steps.py", "from encore_retention.connectors import shopify", "Flows reach a platform only through"),
        ("connectors/codes.py", "from encore_retention.web import admin", "Connectors know no flow and no web app"),
        ("flows/engine.py", "from encore_retention.web import app", "Nothing but the CLI imports the web app"),
    ],
)
def test_an_upward_import_breaks_its_contract(tmp_path, module, upward, contract):
    copy = _copy(tmp_path)
    with (copy / module).open("a") as source:
        source.write(f"\n{upward}  # noqa: E402, F401\n")
    result = _lint(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout  # others may break through it too


def _modules() -> list[str]:
    import pkgutil

    import encore_retention

    return sorted(
        module.name
        for module in pkgutil.walk_packages(encore_retention.__path__, "encore_retention.")
        if ".migrations" not in module.name and not module.name.endswith("__main__")
    )


def test_every_module_imports_on_its_own():
    """No import cycle hides behind the order modules happen to load in: each one, first, in a new interpreter."""
    from concurrent.futures import ThreadPoolExecutor

    def imports(name: str) -> tuple[str, str]:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
        return name, (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else ""

    modules = _modules()
    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = {name: error for name, error in pool.map(imports, modules) if error}
    assert len(modules) > 60
    assert failed == {}
