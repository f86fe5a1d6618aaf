"""Opening the results database (DuckDB) for a moment: one process may write a file at a time, so every function
of this package opens the database, does one short piece of work and closes it; a lock held by another process is
retried with backoff."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from hbir.core.errors import HbirError
from hbir.store.schema import SCHEMA_VERSION, migrate


def exists(db: str) -> bool:
    """Whether the database is there to read: a file that exists, or a MotherDuck (``md:``) database."""
    return db.startswith("md:") or Path(db).exists()


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


def upgrade(db: str, lock_timeout_s: float = 60.0) -> None:
    """Migrate an existing database written by an older hbir, so that reads see today's tables."""
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        found = connection.execute(
            "SELECT max(version) FROM schema_version"
            if connection.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'schema_version'").fetchall()
            else "SELECT 0"
        ).fetchone()[0]
    if (found or 0) < SCHEMA_VERSION:
        with connect(db, lock_timeout_s=lock_timeout_s) as connection:
            migrate(connection)


def now() -> datetime:
    """UTC now, without a time zone: how the tables store times."""
    return datetime.now(UTC).replace(tzinfo=None)
