"""Where hbir keeps things: the cache (converted models, embeddings, ingested tables) and each run's folder."""

from __future__ import annotations

import os
from pathlib import Path

from hbir.core.errors import ConfigError
from hbir.core.run_ids import check_run_id


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
    """A run's folder: ``<output.dir>/<run_id>`` (model, checkpoints, indexes, report, rows); a run id that is not
    one (``check_run_id``), or a folder that would not be inside ``output.dir``, is a ConfigError."""
    folder = Path(output_dir) / check_run_id(run_id)
    if folder.resolve().parent != Path(output_dir).resolve():  # a symbolic link named like the run, say
        raise ConfigError(f"run {run_id}: its folder {folder} leads out of output.dir {output_dir}")
    return folder


def rows_dir(output_dir: str | Path, run_id: str) -> Path:
    """Where a run keeps its rows until they are stored in one transaction: ``<output.dir>/<run_id>/rows``."""
    return run_dir(output_dir, run_id) / "rows"
