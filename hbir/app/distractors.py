"""``hbir distractors``: a dataset plus N distractor passages from another, as a BEIR folder to evaluate on
(``tasks/distractors.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from hbir.core.config import Config
from hbir.core.errors import HbirError
from hbir.core.files import replace_dir


def build_distractor_dataset(
    config: Config,
    base: str,
    source: str,
    n: int,
    out: Path,
    window: int = 3,
    seed: int = 0,
    draw: Literal["windows", "random"] = "windows",
) -> dict[str, int]:
    """Write ``out`` (a BEIR folder): dataset ``base`` of ``data.dir`` with ``n`` unjudged distractors of ``window``
    sentences of ``source`` (one paragraph's, or ``draw="random"``: any of one language's); returns the row counts.
    Refuses an ``out`` that has files."""
    from tasks.distractors import beir_with_distractors, write_beir
    from tasks.ingest import ingest_dataset

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HbirError(f"{out} exists and has files: give --out a new folder (nothing was written)")
    data = config.data

    def read(name: str):
        return ingest_dataset(data.dir, name, data.languages, data.default_lang.get(name))

    tables = beir_with_distractors(read(base), read(source), n, window, seed, draw)
    replace_dir(out, lambda work: write_beir(tables, work))
    return {name: len(frame) for name, frame in tables.items()}
