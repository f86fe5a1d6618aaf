"""The canonical tables every reader produces (DESIGN.md, "Data model")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

QUERY_COLUMNS = ["dataset", "qid", "lang", "text"]
CANDIDATE_COLUMNS = ["dataset", "cid", "lang", "doc_id", "text", "context"]
QREL_COLUMNS = ["dataset", "qid", "cid"]


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
