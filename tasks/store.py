"""The results database (DuckDB): schema and migrations, run records, read-only queries.

DuckDB lets one process open a file for writing, and no other process open it meanwhile, so every function
here opens the database, does one short piece of work and closes it; a lock held by another process is retried
with backoff. All rows of one run's outcome are written in one transaction.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from hbir.errors import HbirError, QueryError

# Each migration moves the schema from version i to i + 1; never edit one that has shipped, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,              -- validate | train | eval | train-eval | ...
        status VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
        error VARCHAR,
        strategy VARCHAR,
        alpha DOUBLE,                       -- share of monolingual batches (mono 1, cross 0)
        model_source VARCHAR,
        seed BIGINT,
        config JSON NOT NULL,
        git_revision VARCHAR,
        device VARCHAR,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP
    );
    CREATE TABLE dataset_versions (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        lang VARCHAR NOT NULL,
        fingerprint VARCHAR NOT NULL,
        n_queries BIGINT NOT NULL,
        n_candidates BIGINT NOT NULL,
        n_qrels BIGINT NOT NULL,
        PRIMARY KEY (run_id, dataset, lang)
    );
    CREATE TABLE validations (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        table_name VARCHAR NOT NULL,
        expectation VARCHAR NOT NULL,
        success BOOLEAN NOT NULL,
        details VARCHAR
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    kind: str
    config: dict[str, Any]
    strategy: str | None = None
    alpha: float | None = None
    model_source: str | None = None
    seed: int | None = None
    git_revision: str | None = None
    device: str | None = None


@contextmanager
def connect(db: str, read_only: bool = False, lock_timeout_s: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open ``db`` briefly, waiting with backoff while another process holds its lock."""
    if not read_only and not db.startswith(("md:", ":memory:")):
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    deadline, delay = time.monotonic() + lock_timeout_s, 0.05
    while True:
        try:
            connection = duckdb.connect(db, read_only=read_only)
            break
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() > deadline:
                raise HbirError(f"results database {db}: {error}") from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    try:
        yield connection
    finally:
        connection.close()


def migrate(connection: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema up to ``SCHEMA_VERSION``; return the version found before."""
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    found = row[0] or 0
    if found > SCHEMA_VERSION:
        raise HbirError(
            f"results database has schema version {found}, newer than this hbir ({SCHEMA_VERSION}): upgrade hbir"
        )
    for version in range(found, SCHEMA_VERSION):
        connection.execute("BEGIN TRANSACTION")
        connection.execute(MIGRATIONS[version])
        connection.execute("INSERT INTO schema_version VALUES (?)", [version + 1])
        connection.execute("COMMIT")
    return found


def start_run(db: str, run: RunRecord, lock_timeout_s: float = 60.0) -> None:
    """Record ``run`` as running (its own short transaction, so ``hbir runs`` shows it meanwhile)."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        connection.execute(
            "INSERT INTO runs (run_id, kind, status, strategy, alpha, model_source, seed, config, git_revision,"
            " device, started_at) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run.run_id,
                run.kind,
                run.strategy,
                run.alpha,
                run.model_source,
                run.seed,
                json.dumps(run.config, default=str),
                run.git_revision,
                run.device,
                _now(),
            ],
        )


def finish_run(
    db: str,
    run_id: str,
    status: str,
    rows: dict[str, pd.DataFrame] | None = None,
    error: str | None = None,
    lock_timeout_s: float = 60.0,
) -> None:
    """Write all of a run's rows and its final status in one transaction: all of it lands, or none."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        connection.execute("BEGIN TRANSACTION")
        try:
            for table, df in (rows or {}).items():
                if len(df):
                    connection.register("incoming", df.assign(run_id=run_id))
                    columns = ", ".join(df.columns.tolist() + ["run_id"])
                    connection.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming")
                    connection.unregister("incoming")
            connection.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE run_id = ?",
                [status, error, _now(), run_id],
            )
            connection.execute("COMMIT")
        except Exception:
            connection.execute("ROLLBACK")
            raise


def read_only_query(db: str, sql: str, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """Answer ``sql`` over the results database; refuse anything but reads (and any file access)."""
    if not db.startswith("md:") and not Path(db).exists():
        raise QueryError(f"results database {db} does not exist yet: run `hbir validate` first, or set HBIR_DB")
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        try:
            statements = connection.extract_statements(sql)
        except duckdb.Error as error:
            raise QueryError(f"cannot parse SQL: {error}") from None
        refused = [s for s in statements if s.type.name not in READ_ONLY_STATEMENTS]
        if not statements:
            raise QueryError("no SQL statement given")
        if refused:
            raise QueryError(
                f"refused: only read queries (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN) are allowed; "
                f"got a {refused[0].type.name} statement: {refused[0].query.strip()[:80]}"
            )
        connection.execute("SET enable_external_access = false")
        try:
            result = None
            for statement in statements:
                result = connection.execute(statement)
            return result.df()
        except duckdb.Error as error:
            raise QueryError(f"query failed: {error}") from None


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
