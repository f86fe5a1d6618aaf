"""The canonical tables every reader produces: queries, candidates and qrels of one dataset, and their folder form.

queries(dataset, qid, lang, text)                    qid shared by the translations of a question
candidates(dataset, cid, lang, doc_id, text, context) one row per candidate sentence; context: its paragraph
qrels(dataset, qid, cid)                             relevance, whatever the query's language
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hbir.core.files import replace_dir

QUERY_COLUMNS = ["dataset", "qid", "lang", "text"]
CANDIDATE_COLUMNS = ["dataset", "cid", "lang", "doc_id", "text", "context"]
QREL_COLUMNS = ["dataset", "qid", "cid"]
TABLES = ("queries", "candidates", "qrels")


@dataclass
class DatasetTables:
    """One dataset in canonical form.

    ``sources`` maps what each file holds to the file: a language for LAReQA (one file per language), a table
    name (``corpus``, ``queries``, ``qrels``) for BEIR.
    """

    name: str
    queries: pd.DataFrame
    candidates: pd.DataFrame
    qrels: pd.DataFrame
    sources: dict[str, Path | str] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return sorted(set(self.queries["lang"]) | set(self.candidates["lang"]))

    def source_of(self, table: str, lang: str | None = None) -> str:
        """The file a row of ``table`` in language ``lang`` came from, for error messages."""
        for key in (lang, "corpus" if table == "candidates" else table):
            if key in self.sources:
                return str(self.sources[key])
        return ", ".join(sorted({str(path) for path in self.sources.values()})) or self.name


def frame(rows: list[dict] | dict, columns: list[str]) -> pd.DataFrame:
    """A table with exactly ``columns``, object-typed, from row dicts or columns; empty ``rows`` give an empty table."""
    return pd.DataFrame(rows, columns=columns).astype({column: "object" for column in columns})


def save_tables(tables: DatasetTables, folder: Path) -> None:
    """Write the tables to ``folder`` (one parquet file each and ``meta.json``), replacing it once complete."""

    def write(work: Path) -> None:
        for table in TABLES:
            getattr(tables, table).to_parquet(work / f"{table}.parquet", index=False)
        sources = {key: str(value) for key, value in tables.sources.items()}
        (work / "meta.json").write_text(json.dumps({"name": tables.name, "sources": sources}), encoding="utf-8")

    replace_dir(folder, write)


def load_tables(folder: str | Path) -> DatasetTables:
    """The tables ``save_tables`` wrote to ``folder``."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    frames = {table: pd.read_parquet(folder / f"{table}.parquet") for table in TABLES}
    return DatasetTables(meta["name"], **frames, sources=meta["sources"])
