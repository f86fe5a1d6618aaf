"""The canonical tables every reader produces: queries, candidates and qrels of one dataset, and their folder form.

queries(dataset, qid, lang, text)                    qid shared by the translations of a question
candidates(dataset, cid, lang, doc_id, text, context) one row per candidate sentence; context: its paragraph
qrels(dataset, qid, cid)                             relevance, whatever the query's language
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hbir.core.files import replace_dir

QUERY_COLUMNS = ["dataset", "qid", "lang", "text"]
CANDIDATE_COLUMNS = ["dataset", "cid", "lang", "doc_id", "text", "context"]
QREL_COLUMNS = ["dataset", "qid", "cid"]
TABLES = ("queries", "candidates", "qrels")
TEXT_COLUMNS = ("text", "context")  # the wide columns: a pool of a million passages holds gigabytes of them
TEXT_BATCH = 10_000  # candidate rows read at once for one language's texts (English at 1M read: 50k +155 MB, 10k +75)
SORT_MEMORY = "512MB"  # DuckDB's memory for sorting a language's candidates by id (beyond it: spilled to disk)
SORT_ROWS = 50_000  # a language's candidates sorted by id this many at a time, a range of ids after another
SORT_BYTES = 64 << 20  # and at most this many bytes of texts (and one row): 50k documents of 20 KB failed at 512MB


def return_arrow_memory_when_freed() -> None:
    """Arrow's buffers from jemalloc, given back to the system as soon as they are freed (decay 0), unless
    ``ARROW_DEFAULT_MEMORY_POOL`` names a pool, or this build of pyarrow has no jemalloc (its default stays).
    Arrow's default pool (mimalloc) keeps much of what it frees: reading Parquet a row group at a time, for the
    contracts' batches and for each shard's texts, grew the process by hundreds of MiB that Arrow no longer used.
    XQuAD-R + 1M distractors, 384-d (``benchmarks/stage_memory.py``): embed stage 1,342 -> 1,016 MiB, contracts
    ~1,250 -> ~1,060 MiB but ~9 s slower (26-30 s -> 34-44 s: jemalloc maps and unmaps its large buffers)."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:
        pass


return_arrow_memory_when_freed()


@dataclass
class DatasetTables:
    """One dataset in canonical form.

    ``sources`` maps what each file holds to the file: a language for LAReQA (one file per language), a table
    name (``corpus``, ``queries``, ``qrels``) for BEIR. ``folder``: where ``save_tables`` wrote them, set by
    ``load_tables``; candidates loaded without their texts (``load_tables(..., texts=False)``) read them from there,
    a language or a batch at a time (``candidate_texts``, ``candidate_batches``).
    """

    name: str
    queries: pd.DataFrame
    candidates: pd.DataFrame
    qrels: pd.DataFrame
    sources: dict[str, Path | str] = field(default_factory=dict)
    folder: Path | None = None

    @property
    def languages(self) -> list[str]:
        return sorted(set(self.queries["lang"]) | set(self.candidates["lang"]))

    def source_of(self, table: str, lang: str | None = None) -> str:
        """The file a row of ``table`` in language ``lang`` came from, for error messages."""
        for key in (lang, "corpus" if table == "candidates" else table):
            if key in self.sources:
                return str(self.sources[key])
        return ", ".join(sorted({str(path) for path in self.sources.values()})) or self.name

    def language_candidates(self, lang: str) -> pd.DataFrame:
        """Every column of the candidates of language ``lang``, in table order (their texts from the folder when the
        table was loaded without them)."""
        rows = self.candidates[self.candidates["lang"] == lang]
        missing = [column for column in TEXT_COLUMNS if column not in rows]
        if missing:
            rows = rows.assign(**{column: self.candidate_texts(column, lang) for column in missing})
        return rows[CANDIDATE_COLUMNS]

    def candidate_texts(self, column: str, lang: str | None = None) -> list[str]:
        """Column ``column`` (``text`` or ``context``) of the candidates of language ``lang`` (all: None), in table
        order; from the folder when the table was loaded without it."""
        if lang is not None:
            return self.text_column(column, lang).read()
        if column in self.candidates:
            return self.candidates[column].tolist()
        if self.folder is None:
            raise ValueError(f"{self.name}: candidates have no {column!r} column and no folder to read it from")
        texts: list[str] = []
        for batch in parquet_batches(Path(self.folder) / "candidates.parquet", [column], TEXT_BATCH):
            texts += batch.column(column).to_pylist()
        return texts

    def text_column(self, column: str, lang: str) -> TextList | TextColumn:
        """Column ``column`` of the candidates of language ``lang``, in table order, to read a batch at a time or
        at given rows: the values themselves when the table holds them, else a ``TextColumn`` of the folder's
        Parquet file (a language's texts never whole in memory)."""
        if column in self.candidates:
            return TextList(self.candidates.loc[self.candidates["lang"] == lang, column].tolist())
        if self.folder is None:
            raise ValueError(f"{self.name}: candidates have no {column!r} column and no folder to read it from")
        count = int((self.candidates["lang"] == lang).sum())
        return TextColumn(Path(self.folder) / "candidates.parquet", column, lang, count)

    def candidate_batches(self, columns: list[str], batch_size: int) -> Iterator[pd.DataFrame]:
        """The candidates' ``columns``, ``batch_size`` rows at a time in table order (row numbers kept as the
        index), read from the folder when the table was loaded without its texts."""
        if all(column in self.candidates for column in columns):
            for start in range(0, len(self.candidates), batch_size):
                yield self.candidates.iloc[start : start + batch_size][columns]
            return
        start = 0
        for batch in parquet_batches(Path(self.folder) / "candidates.parquet", columns, batch_size):
            rows = batch.to_pandas()
            rows.index = pd.RangeIndex(start, start + len(rows))
            start += len(rows)
            yield rows

    def candidates_by_id(self, lang: str, batch_size: int) -> Iterator[pd.DataFrame]:
        """Every column of the candidates of language ``lang`` sorted by ``cid``, ``batch_size`` rows at a time. A
        table loaded without its texts is sorted by DuckDB straight from the folder's Parquet file a range of ids
        at a time (at most ``SORT_ROWS`` rows and ``SORT_BYTES`` of texts: the sort's memory is a range's, not the
        language's), within ``SORT_MEMORY`` and spilling to a temporary folder beyond it: never a language's texts
        whole in memory. XQuAD-R + 1M distractors, English's 306k candidates: sorted whole, 595 MB peak in 2.4 s;
        in ranges of 50k, 267 MB in 3.2 s. Ranges of 50k rows alone failed on long documents (60k of 20 KB: DuckDB
        out of memory at 512 MB, spilling or not), hence the bytes."""
        if all(column in self.candidates for column in TEXT_COLUMNS):
            rows = self.language_candidates(lang).sort_values(["cid"])
            for start in range(0, len(rows), batch_size):
                yield rows.iloc[start : start + batch_size]
            return
        if self.folder is None:
            raise ValueError(f"{self.name}: candidates have no texts and no folder to read them from")
        columns = ", ".join(f'"{column}"' for column in CANDIDATE_COLUMNS)
        path = str(Path(self.folder) / "candidates.parquet")
        with tempfile.TemporaryDirectory(prefix="hbir-sort-") as spill:
            config = {"memory_limit": SORT_MEMORY, "temp_directory": spill, "threads": 1}
            with duckdb.connect(config=config) as con:
                for where, bounds in _id_ranges(con, path, lang):
                    query = f"SELECT {columns} FROM read_parquet(?) WHERE lang = ? AND {where} ORDER BY cid"
                    for batch in con.sql(query, params=[path, lang, *bounds]).to_arrow_reader(batch_size):
                        if batch.num_rows:
                            yield batch.to_pandas()


def _id_ranges(con: duckdb.DuckDBPyConnection, path: str, lang: str) -> Iterator[tuple[str, list[str]]]:
    """The candidates of language ``lang`` in the Parquet file ``path`` cut into ranges of ids, in order, each as an
    SQL condition and its parameters; a range holds at most ``SORT_ROWS`` rows and ``SORT_BYTES`` of text and
    context (or a single row), and the last range also takes the rows without an id (NULLS LAST, where a sort of the
    whole language puts them). A range starts where the row's number // SORT_ROWS + the bytes before it //
    SORT_BYTES (both counted in id order) goes up: one query over the ids and the texts' lengths."""
    query = """
        SELECT cid FROM (
            SELECT cid, part, lag(part) OVER (ORDER BY cid) AS previous FROM (
                SELECT cid, (row_number() OVER (ORDER BY cid) - 1) // $rows
                    + coalesce(sum(bytes) OVER (ORDER BY cid ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                    // $bytes AS part
                FROM (
                    SELECT cid, coalesce(strlen(text), 0) + coalesce(strlen(context), 0) AS bytes
                    FROM read_parquet($path) WHERE lang = $lang AND cid IS NOT NULL
                )
            )
        ) WHERE part <> previous ORDER BY cid"""
    bounds = {"path": path, "lang": lang, "rows": SORT_ROWS, "bytes": SORT_BYTES}
    cuts = [cid for (cid,) in con.execute(query, bounds).fetchall()]
    for low, high in zip([None, *cuts], [*cuts, None], strict=True):
        if low is None:
            yield ("TRUE", []) if high is None else ("cid < ?", [high])
        else:
            yield ("(cid >= ? OR cid IS NULL)", [low]) if high is None else ("cid >= ? AND cid < ?", [low, high])


def parquet_batches(path: Path, columns: list[str], batch_size: int, lang: str | None = None) -> Iterator[pa.Table]:
    """The file's ``columns``, ``batch_size`` rows at a time (the last batch fewer), read a row group at a time.
    Not ``ParquetFile.iter_batches``: it kept what it had read (XQuAD-R + 1M distractors, batches of 100k: 870 MB
    of Arrow memory by the tenth batch), where reading row groups stays at one batch's. ``lang``: only the row groups
    whose statistics say they may hold candidates of that language (a table written language by language: the
    language's own; its rows are still to be filtered)."""
    parquet = pq.ParquetFile(path)
    pending: list[pa.Table] = []
    held = 0
    for group in range(parquet.num_row_groups):
        if lang is not None and not _may_hold(parquet.metadata.row_group(group), "lang", lang):
            continue
        pending.append(parquet.read_row_group(group, columns=columns))
        held += pending[-1].num_rows
        if held >= batch_size:
            rows = pa.concat_tables(pending)
            cut = held - held % batch_size
            for start in range(0, cut, batch_size):
                yield rows.slice(start, batch_size)
            pending, held = [rows.slice(cut)], held - cut
    if held:
        yield pa.concat_tables(pending)


def _may_hold(group: pq.RowGroupMetaData, column: str, value: str) -> bool:
    """Whether a row group may hold ``value`` in ``column`` by its min / max statistics (no statistics: it may)."""
    for index in range(group.num_columns):
        if group.column(index).path_in_schema == column:
            stats = group.column(index).statistics
            return stats is None or not stats.has_min_max or stats.min <= value <= stats.max
    return True


class TextList(list):
    """Texts in memory, read the way a ``TextColumn`` is: ``batches``, ``subset``, ``read``."""

    def batches(self, size: int = TEXT_BATCH) -> Iterator[list[str]]:
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def subset(self, rows: np.ndarray) -> TextList:
        return TextList(self[i] for i in rows)

    def read(self, max_chars: int | None = None) -> list[str]:
        return self if max_chars is None else [text[:max_chars] for text in self]


@dataclass(frozen=True, eq=False)
class TextColumn:
    """Column ``column`` of the candidates of language ``lang`` in the Parquet file ``path`` (``count`` of them),
    or of their rows ``rows`` (positions among the language's candidates, in that order): read a batch at a time
    (``batches``), or whole (``read``): a subset's rows alone, in one pass over the language's row groups. Small to
    pickle: a Dask worker reads its shard's texts itself."""

    path: Path
    column: str
    lang: str
    count: int
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count if self.rows is None else len(self.rows)

    def batches(self, size: int = TEXT_BATCH) -> Iterator[list[str]]:
        if self.rows is not None:
            yield from TextList(self.read()).batches(size)
            return
        for values in self._language_batches(size):
            yield values.to_pylist()

    def subset(self, rows: np.ndarray) -> TextColumn:
        rows = np.asarray(rows, dtype=np.int64)
        return replace(self, rows=rows if self.rows is None else self.rows[rows])

    def read(self, max_chars: int | None = None) -> list[str]:
        """The texts, each cut to its first ``max_chars`` characters when given (in Arrow, before they become
        Python strings: a shard of 50k documents of 5,000 characters is 500 MB of them)."""
        if self.rows is None:
            return [text for values in self._language_batches(TEXT_BATCH) for text in _cut(values, max_chars)]
        order = np.argsort(self.rows, kind="stable")
        wanted = self.rows[order]  # ascending: taken in one pass
        texts: list[str | None] = [None] * len(wanted)
        taken = offset = 0
        for values in self._language_batches(TEXT_BATCH):
            end = offset + len(values)
            stop = int(np.searchsorted(wanted, end))
            found = _cut(values.take(wanted[taken:stop] - offset), max_chars)
            for at, text in zip(order[taken:stop], found, strict=True):
                texts[at] = text
            taken, offset = stop, end
            if taken == len(wanted):
                break
        return texts

    def _language_batches(self, size: int) -> Iterator[pa.ChunkedArray]:
        for batch in parquet_batches(self.path, [self.column, "lang"], size, self.lang):
            yield batch.filter(pc.equal(batch.column("lang"), self.lang))[self.column]


def _cut(values: pa.ChunkedArray, max_chars: int | None) -> list[str]:
    """Arrow strings as Python strings, each cut to its first ``max_chars`` characters (None: whole)."""
    return (values if max_chars is None else pc.utf8_slice_codeunits(values, 0, max_chars)).to_pylist()


def positions_in(values: pd.Series, keys: pd.Series) -> np.ndarray:
    """For each of ``values``, the position of the first equal value in ``keys`` (-1: none), by Arrow's hash lookup
    on the strings as they are: pandas' ``isin`` / ``map`` made a Python string of each key first (a pool of a
    million candidate ids: 500 MB more)."""
    found = pc.index_in(_arrow_strings(values), value_set=_arrow_strings(keys))
    return found.fill_null(-1).to_numpy().astype(np.int64)


def _arrow_strings(column: pd.Series) -> pa.ChunkedArray:
    array = pa.array(column, from_pandas=True)  # an Arrow-backed column as it is; a missing value: null
    array = array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])
    return array.cast(pa.large_string())


def frame(rows: list[dict] | dict, columns: list[str]) -> pd.DataFrame:
    """A table with exactly ``columns``, each pandas' string type (Arrow-backed: a million passages' texts take their
    UTF-8 size, not a Python object each), from row dicts or columns; a missing value stays missing (NaN), for the
    contracts to name; empty ``rows`` give an empty table."""
    return pd.DataFrame(rows, columns=columns).astype({column: "str" for column in columns})


def save_tables(tables: DatasetTables, folder: Path, more_candidates: Iterable[pd.DataFrame] = ()) -> None:
    """Write the tables to ``folder`` (one parquet file each and ``meta.json``), replacing it once complete.
    ``more_candidates``: further candidate rows after ``tables.candidates``, written as they come (a corpus that
    is never whole in memory)."""

    def write(work: Path) -> None:
        for table in ("queries", "qrels"):
            getattr(tables, table).to_parquet(work / f"{table}.parquet", index=False)
        first = pa.Table.from_pandas(tables.candidates, preserve_index=False)
        with pq.ParquetWriter(work / "candidates.parquet", first.schema) as writer:
            writer.write_table(first)
            for part in more_candidates:
                writer.write_table(pa.Table.from_pandas(part, schema=first.schema, preserve_index=False))
        sources = {key: str(value) for key, value in tables.sources.items()}
        (work / "meta.json").write_text(json.dumps({"name": tables.name, "sources": sources}), encoding="utf-8")

    replace_dir(folder, write)


def load_tables(folder: str | Path, texts: bool = True) -> DatasetTables:
    """The tables ``save_tables`` wrote to ``folder``; ``texts=False``: the candidates without their text and
    context (``TEXT_COLUMNS``), read from the folder when needed (``DatasetTables.candidate_texts``)."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    frames = {table: pd.read_parquet(folder / f"{table}.parquet") for table in ("queries", "qrels")}
    columns = None if texts else [c for c in CANDIDATE_COLUMNS if c not in TEXT_COLUMNS]
    frames["candidates"] = pd.read_parquet(folder / "candidates.parquet", columns=columns)
    return DatasetTables(meta["name"], **frames, sources=meta["sources"], folder=folder)
