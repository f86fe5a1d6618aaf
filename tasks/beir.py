"""Readers for BEIR-style retrieval data, from local files or the Hugging Face Hub.

Local layout (``<data.dir>/<dataset>/``): ``corpus.jsonl`` rows ``{"_id", "text", "lang"}`` (optional ``title``,
``doc_id`` shared by translations, ``context``), ``queries.jsonl`` rows ``{"_id", "text", "lang"}`` where ``_id``
is shared by the translations of a query, and ``qrels/test.tsv`` (or the only ``qrels/*.tsv``) with columns
``query-id corpus-id score``. Standard (monolingual) BEIR data has no ``lang``: the dataset's ``data.default_lang``
fills it. A non-empty ``title`` is joined to the text as BEIR does (``title + " " + text``). A Hub dataset
(``hf:<name>``) has the same three tables as configs ``corpus``, ``queries`` and ``qrels``. Both go through
``datasets.load_dataset`` and one conversion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from hbir.core.errors import DataError
from tasks.tables import CANDIDATE_COLUMNS, QREL_COLUMNS, QUERY_COLUMNS, DatasetTables, frame, save_tables

REQUIRED = {
    "corpus": ["_id", "text", "lang"],
    "queries": ["_id", "text", "lang"],
    "qrels": ["query-id", "corpus-id"],
}
DEFAULT_LANG_HINT = "or give the dataset a language, e.g. --set 'data.default_lang={%s: en}'"
EXAMPLES = {
    "corpus": '{"_id": "d1", "text": "Paris is the capital of France.", "lang": "en"}',
    "queries": '{"_id": "q1", "text": "What is the capital of France?", "lang": "en"}',
    "qrels": "query-id<TAB>corpus-id<TAB>score, e.g. q1<TAB>d1<TAB>1",
}

CORPUS_BLOCK_BYTES = 16 << 20  # of corpus.jsonl read, converted and written at a time

# Loads one of "corpus", "queries", "qrels" and returns (where it came from, its rows).
TableLoader = Callable[[str], tuple[str, pd.DataFrame]]


def read_beir_dir(dataset_dir: Path, name: str, default_lang: str | None = None) -> DatasetTables:
    """Read a local BEIR folder: the corpus through ``corpus_batches``, queries and qrels through ``datasets``'
    json and csv builders."""
    corpus_file = dataset_dir / "corpus.jsonl"
    parts = list(corpus_batches(corpus_file, name, default_lang))
    candidates = pd.concat(parts, ignore_index=True) if parts else frame([], CANDIDATE_COLUMNS)
    return tables_from_beir(name, _small_table_loader(dataset_dir), default_lang, (str(corpus_file), candidates))


def write_beir_dir(dataset_dir: Path, name: str, default_lang: str | None, folder: Path) -> None:
    """``save_tables(read_beir_dir(...), folder)`` without the corpus in memory: its rows converted and written a
    block of the file at a time (peak memory one block's, whatever the corpus's size)."""
    corpus_file = dataset_dir / "corpus.jsonl"
    batches = corpus_batches(corpus_file, name, default_lang)
    first = next(batches, None)  # a corpus that cannot be read fails here, before the queries are
    first = frame([], CANDIDATE_COLUMNS) if first is None else first
    tables = tables_from_beir(name, _small_table_loader(dataset_dir), default_lang, (str(corpus_file), first))
    save_tables(tables, folder, more_candidates=batches)


def corpus_batches(path: Path, name: str, default_lang: str | None) -> Iterator[pd.DataFrame]:
    """The rows of a ``corpus.jsonl`` as canonical candidates (``CANDIDATE_COLUMNS``), the whole lines of about
    ``CORPUS_BLOCK_BYTES`` of the file at a time (``json_blocks``); a file that cannot be read raises a
    ``DataError`` naming it."""
    if not path.exists():
        raise DataError(path, f"missing: a BEIR dataset needs corpus rows like {EXAMPLES['corpus']}")
    try:
        for batch in json_blocks(path, CORPUS_BLOCK_BYTES):
            rows = _checked_rows(str(path), "corpus", batch.to_pandas(), name, default_lang)
            yield candidates_frame(name, rows)
    except pa.ArrowInvalid as error:
        raise DataError(path, f"cannot be read as JSON lines: {error}") from None


def json_blocks(path: Path, size: int) -> Iterator[pa.Table]:
    """A JSON-lines file's rows, its whole lines of about ``size`` bytes at a time, each block parsed by pyarrow's
    JSON reader while the one before is used (``datasets``' streaming mode goes through Python rows: 4x slower).
    As pyarrow's streaming reader does, the first block's columns and types hold for the rest (a new field or a
    changed type is an error). Not that reader itself: it reads ~40 blocks ahead of what is taken from it (XQuAD-R
    + 1M distractors, a 1.2 GB file: 600 MB more while ingesting)."""
    blocks = _line_blocks(path, size)
    first = next((batch for batch in map(_parse_json, blocks) if batch.num_rows), None)  # blank lines: no columns
    if first is None:
        return
    with ThreadPoolExecutor(max_workers=1) as parser:  # read here, parsed there: the thread allocates no bytes
        batch = first
        while batch is not None:
            block = next(blocks, None)
            ahead = None if block is None else parser.submit(_parse_json, block, first.schema)
            if batch.num_rows:
                yield batch
            batch = None if ahead is None else ahead.result()


def _parse_json(block: bytes, schema: pa.Schema | None = None) -> pa.Table:
    """Whole JSON lines, parsed as one block (no line too long for it), to ``schema`` when given."""
    read = pa_json.ReadOptions(block_size=len(block) + 1)
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error" if schema else "infer")
    return pa_json.read_json(pa.BufferReader(block), read_options=read, parse_options=parse)


def _line_blocks(path: Path, size: int) -> Iterator[bytes]:
    """The file's bytes about ``size`` at a time, each block cut after its last line break (a line longer than
    ``size``: the block grows to hold it)."""
    with open(path, "rb") as stream:
        rest = b""
        while chunk := stream.read(size):
            block = rest + chunk
            cut = block.rfind(b"\n") + 1
            if cut:
                rest = block[cut:]
                yield block[:cut]
            else:
                rest = block
        if rest:
            yield rest


def candidates_frame(name: str, corpus: pd.DataFrame) -> pd.DataFrame:
    """BEIR corpus rows (checked) as canonical candidates: a non-empty title joined before the text, ``doc_id``
    and ``context`` defaulting to the row's id and text."""
    texts = corpus["text"]
    if "title" in corpus:  # BEIR's convention: the title before the text
        titles = corpus["title"].map(lambda title: title.strip() if isinstance(title, str) else "")
        texts = [
            f"{title} {text}" if title and isinstance(text, str) else text
            for title, text in zip(titles, texts, strict=True)
        ]
    return frame(
        {
            "dataset": name,
            "cid": corpus["_id"].astype(str),
            "lang": corpus["lang"],
            "doc_id": (corpus["doc_id"] if "doc_id" in corpus else corpus["_id"]).astype(str),
            "text": texts,
            "context": corpus["context"] if "context" in corpus else texts,
        },
        CANDIDATE_COLUMNS,
    )


def _small_table_loader(dataset_dir: Path) -> TableLoader:
    """Loads a local BEIR folder's queries or qrels through ``datasets``."""
    files = {"queries": dataset_dir / "queries.jsonl", "qrels": _qrels_file(dataset_dir)}

    def load(table: str) -> tuple[str, pd.DataFrame]:
        path = files[table]
        if not path.exists():
            raise DataError(path, f"missing: a BEIR dataset needs {table} rows like {EXAMPLES[table]}")
        builder, options = ("csv", {"delimiter": "\t"}) if table == "qrels" else ("json", {})
        return str(path), _load_hf(builder, str(path), data_files=str(path), **options)

    return load


def read_hf_dataset(name: str, repo_id: str, default_lang: str | None = None) -> DatasetTables:
    """Read a Hub dataset with configs ``corpus``, ``queries`` and ``qrels`` (needs network or a local cache)."""

    def load(table: str) -> tuple[str, pd.DataFrame]:
        return f"hf:{repo_id} ({table})", _load_hf(repo_id, f"hf:{repo_id}", table)

    return tables_from_beir(name, load, default_lang)


def tables_from_beir(
    name: str, load: TableLoader, default_lang: str | None = None, candidates: tuple[str, pd.DataFrame] | None = None
) -> DatasetTables:
    """Convert BEIR corpus / queries / qrels rows (as loaded by ``load``) into the canonical tables; rows without a
    ``lang`` get ``default_lang``. ``candidates``: (file, canonical candidates) already read, instead of the corpus
    through ``load``."""
    if candidates is None:
        corpus_file, corpus = _checked(load, "corpus", name, default_lang)
        candidates = (corpus_file, candidates_frame(name, corpus))
    queries_file, queries = _checked(load, "queries", name, default_lang)
    qrels_file, qrels = _checked(load, "qrels", name, default_lang)
    if "score" in qrels.columns:
        qrels = qrels[pd.to_numeric(qrels["score"], errors="coerce").fillna(0) > 0]
    return DatasetTables(
        name=name,
        queries=frame(
            {"dataset": name, "qid": queries["_id"].astype(str), "lang": queries["lang"], "text": queries["text"]},
            QUERY_COLUMNS,
        ),
        candidates=candidates[1],
        qrels=frame(
            {"dataset": name, "qid": qrels["query-id"].astype(str), "cid": qrels["corpus-id"].astype(str)},
            QREL_COLUMNS,
        ),
        sources={"corpus": candidates[0], "queries": queries_file, "qrels": qrels_file},
    )


def _checked(load: TableLoader, table: str, name: str, default_lang: str | None) -> tuple[str, pd.DataFrame]:
    where, rows = load(table)
    return where, _checked_rows(where, table, rows, name, default_lang)


def _checked_rows(where: str, table: str, rows: pd.DataFrame, name: str, default_lang: str | None) -> pd.DataFrame:
    """``rows`` of ``table`` with ``default_lang`` filled in; a missing field or a text or language that is not a
    string raises a ``DataError`` naming ``where``, the field and a row."""
    if default_lang and "lang" in REQUIRED[table]:
        rows = rows.assign(lang=rows["lang"].fillna(default_lang) if "lang" in rows else default_lang)
    missing = [column for column in REQUIRED[table] if column not in rows.columns]
    if missing:
        hint = f" ({DEFAULT_LANG_HINT % name})" if missing[0] == "lang" else ""
        raise DataError(
            where, f"field {missing[0]!r} missing from the {table} rows; expected rows like {EXAMPLES[table]}{hint}"
        )
    for column in ("text", "lang"):
        if column in REQUIRED[table]:
            # a missing or null value is left to the contracts ("lang is present"), which name the row
            wrong = rows[rows[column].map(lambda value: not isinstance(value, str) and not pd.isna(value))]
            if len(wrong):
                raise DataError(
                    where,
                    f"field {column!r} must be a string, got {wrong[column].iloc[0]!r} "
                    f"in row {{'_id': {wrong['_id'].iloc[0]!r}}}",
                )
    return rows


def _qrels_file(dataset_dir: Path) -> Path:
    folder = dataset_dir / "qrels"
    candidates = sorted(folder.glob("*.tsv"))
    if (folder / "test.tsv").exists() or len(candidates) != 1:
        return folder / "test.tsv"
    return candidates[0]


def _load_hf(path: str, where: str, config: str | None = None, **options) -> pd.DataFrame:
    """One table through ``datasets.load_dataset`` (first split), any reading failure as a ``DataError``."""
    import datasets  # lazy: importing datasets costs a second

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        loaded = datasets.load_dataset(path, config, **options)
    except Exception as error:  # datasets wraps parser errors in its own types; the root cause is what helps
        cause = error
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        raise DataError(where, f"cannot be read by datasets: {type(cause).__name__}: {cause}") from None
    split = next(iter(loaded.values()))
    return split.to_pandas()
