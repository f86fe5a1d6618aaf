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

from hbir.core.errors import HbirError, QueryError
from hbir.store.schema import SCHEMA_VERSION, migrate, schema_version


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


def upgrade(db: str, lock_timeout_s: float = 60.0) -> int:
    """Migrate an existing hbir database written by an older hbir to today's schema (``hbir migrate``); returns
    the version it had. HbirError for a missing or foreign database (nothing is created or changed)."""
    if not exists(db):
        raise HbirError(f"results database {db} does not exist: there is nothing to migrate")
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        found = schema_version(connection)
    if found < SCHEMA_VERSION:
        with connect(db, lock_timeout_s=lock_timeout_s) as connection:
            migrate(connection)
    return found


def require_current(db: str, lock_timeout_s: float = 60.0, upgrade_old: bool = False) -> None:
    """Check that ``db`` is an hbir database of today's schema before reading it; reads never create or change
    anything. An older schema is migrated with ``upgrade_old`` (commands that write anyway), else refused with the
    command that migrates it."""
    if not exists(db):
        raise QueryError(f"results database {db} does not exist yet: run `hbir validate` first, or set HBIR_DB")
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        found = schema_version(connection)
    if found == SCHEMA_VERSION:
        return
    if found == 0:
        raise QueryError(f"results database {db} is empty: no run has been recorded in it yet")
    if not upgrade_old:
        raise QueryError(
            f"results database {db} has schema version {found}, from an older hbir (this one writes "
            f"{SCHEMA_VERSION}): run `hbir migrate` once (it adds tables and columns and keeps every row), then read"
        )
    upgrade(db, lock_timeout_s)


def now() -> datetime:
    """UTC now, without a time zone: how the tables store times."""
    return datetime.now(UTC).replace(tzinfo=None)
