"""Where converted models and cached embeddings are kept, and how one is written without ever being half there."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``$HBIR_CACHE_DIR``, else ``~/.cache/hbir``."""
    return Path(os.environ.get("HBIR_CACHE_DIR", Path.home() / ".cache" / "hbir"))


def models_cache_dir() -> Path:
    """``$HBIR_CACHE_DIR/models``, else ``~/.cache/hbir/models``."""
    return cache_root() / "models"


def embeddings_cache_dir() -> Path:
    """``$HBIR_CACHE_DIR/embeddings``, else ``~/.cache/hbir/embeddings``."""
    return cache_root() / "embeddings"


def build_once(out_dir: Path, build: Callable[[Path], None], marker: str = "model.safetensors") -> Path:
    """Return ``out_dir``, first calling ``build(work_dir)`` to fill it when it lacks ``marker``.

    The directory is built next to ``out_dir`` and renamed into place, so a crash leaves no half-written model and
    two processes converting at once both end with the same complete directory.
    """
    out_dir = Path(out_dir)
    if (out_dir / marker).exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        build(work_dir)
        try:
            work_dir.rename(out_dir)
        except OSError:
            if not (out_dir / marker).exists():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir
