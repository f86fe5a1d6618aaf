"""The layer order is a contract (``[tool.importlinter]`` in pyproject.toml): this tree keeps it, and a stage that
imports the application layer breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT_ROOT

PACKAGES = ("hbir", "flows", "tasks", "models", "data_contracts")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the packages under ``root``, with the contracts of ``root/pyproject.toml``."""
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_the_layer_contracts():
    done = lint_imports(PROJECT_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_a_stage_that_imports_the_app_layer_breaks_the_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    stage = tmp_path / "tasks" / "embedding.py"
    stage.write_text(stage.read_text(encoding="utf-8") + "\nfrom hbir.app import stages  # noqa\n", encoding="utf-8")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "layers: cli > flows > app" in done.stdout and "BROKEN" in done.stdout
    assert "tasks.embedding -> hbir.app.stages" in done.stdout
