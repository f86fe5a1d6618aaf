"""Ingestion: find a dataset by name, read it with the reader for its layout, fingerprint its content.

A dataset name is a folder under ``data.dir`` (LAReQA ``<lang>.json`` files, or a BEIR folder with
``corpus.jsonl``) or ``hf:<repo id>`` for a Hub dataset in the BEIR layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from hbir.core.errors import DataError
from tasks.beir import read_beir_dir, read_hf_dataset, write_beir_dir
from tasks.lareqa import read_lareqa
from tasks.tables import DatasetTables, positions_in, save_tables

FINGERPRINT_BATCH = 10_000  # candidate rows serialised at once for a fingerprint (50k: 400 MB of JSON)


def ingest_dataset(
    data_dir: Path, name: str, languages: Iterable[str], default_lang: str | None = None
) -> DatasetTables:
    """Read dataset ``name`` into the canonical tables; raise ``DataError`` naming the file at fault.
    ``default_lang``: the language of BEIR rows without one (a standard BEIR folder has no ``lang``)."""
    if name.startswith("hf:"):
        return read_hf_dataset(name, name.removeprefix("hf:"), default_lang)
    folder = Path(data_dir) / name
    if not folder.is_dir():
        available = sorted(p.name for p in Path(data_dir).iterdir() if p.is_dir()) if Path(data_dir).is_dir() else []
        hint = (
            f"datasets there: {', '.join(available)}"
            if available
            else "set data.dir or HBIR_DATA_DIR, e.g. HBIR_DATA_DIR=../shared/data/lareqa"
        )
        raise DataError(folder, f"dataset {name!r} not found: no such folder ({hint})")
    if (folder / "corpus.jsonl").exists():
        return read_beir_dir(folder, name, default_lang)
    if any(folder.glob("*.json")):
        return read_lareqa(folder, name, languages)
    raise DataError(folder, "no data: expected LAReQA files <lang>.json (e.g. en.json) or a BEIR corpus.jsonl")


def ingest_to_folder(
    data_dir: Path, name: str, languages: Iterable[str], folder: Path, default_lang: str | None = None
) -> None:
    """``save_tables(ingest_dataset(...), folder)``; a local BEIR corpus is converted a block at a time, never
    whole in memory (``write_beir_dir``)."""
    source = Path(data_dir) / name
    if not name.startswith("hf:") and (source / "corpus.jsonl").exists():
        write_beir_dir(source, name, default_lang, folder)
    else:
        save_tables(ingest_dataset(data_dir, name, languages, default_lang), folder)


def json_rows(parts: Iterable[pd.DataFrame]) -> Iterator[bytes]:
    """The UTF-8 bytes of ``pd.concat(parts).to_json(orient="values", force_ascii=False)``, a part at a time: a
    table's rows as JSON without the table whole in memory."""
    yield b"["
    first = True
    for part in parts:
        if len(part):
            body = part.to_json(orient="values", force_ascii=False)[1:-1]
            yield body.encode("utf-8") if first else b"," + body.encode("utf-8")
            first = False
    yield b"]"


def dataset_versions(tables: DatasetTables) -> pd.DataFrame:
    """One row per language: content fingerprint and row counts.

    The fingerprint is a SHA-256 over the language's canonical rows (queries, candidates and the qrels that
    point at its candidates), so it changes with the content and not with file formatting: each table's rows
    sorted by id as ``DataFrame.to_json(orient="values")`` writes them, the candidates read ``FINGERPRINT_BATCH``
    rows at a time (``json_rows``: the same bytes as the whole table's).
    """
    candidate_rows = positions_in(tables.qrels["cid"], tables.candidates["cid"])
    known = candidate_rows >= 0  # a qrel to no candidate is the contracts' to report; it belongs to no language
    qrels = tables.qrels[known].assign(lang=tables.candidates["lang"].to_numpy()[candidate_rows[known]])
    rows = []
    for lang in tables.languages:
        language_queries = tables.queries[tables.queries["lang"] == lang].sort_values(["qid"])
        language_qrels = qrels[qrels["lang"] == lang].sort_values(["qid", "cid"])
        parts = [[language_queries], tables.candidates_by_id(lang, FINGERPRINT_BATCH), [language_qrels]]
        digest = hashlib.sha256()
        for part in parts:
            for chunk in json_rows(part):
                digest.update(chunk)
        rows.append(
            {
                "dataset": tables.name,
                "lang": lang,
                "fingerprint": digest.hexdigest(),
                "n_queries": len(language_queries),
                "n_candidates": int((tables.candidates["lang"] == lang).sum()),
                "n_qrels": len(language_qrels),
            }
        )
    return pd.DataFrame(rows)
