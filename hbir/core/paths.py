"""Where hbir keeps things: the cache (converted models, embeddings, ingested tables) and each run's folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$HBIR_CACHE_DIR``, else ``~/.cache/hbir``."""
    return Path(os.environ.get("HBIR_CACHE_DIR", Path.home() / ".cache" / "hbir"))


def models_cache_dir() -> Path:
    """Converted and built models: ``<cache>/models``."""
    return cache_root() / "models"


def embeddings_cache_dir() -> Path:
    """Embedding blocks and dataset vectors: ``<cache>/embeddings``."""
    return cache_root() / "embeddings"


def tables_cache_dir() -> Path:
    """Ingested datasets in canonical tables, one folder per source fingerprint: ``<cache>/tables``."""
    return cache_root() / "tables"


def run_dir(output_dir: str | Path, run_id: str) -> Path:
    """A run's folder: ``<output.dir>/<run_id>`` (model, checkpoints, indexes, report, rows)."""
    return Path(output_dir) / run_id


def rows_dir(output_dir: str | Path, run_id: str) -> Path:
    """Where a run keeps its rows until they are stored in one transaction: ``<output.dir>/<run_id>/rows``."""
    return run_dir(output_dir, run_id) / "rows"
