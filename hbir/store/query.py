"""Reading the results database: user SQL answered read-only (``hbir query``), and the parameterised reads the
application's commands make (``read``)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from hbir.core.errors import QueryError, QueryInterrupted
from hbir.store.database import connect, require_current

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def read(
    db: str, sql: str, params: list[Any] | None = None, lock_timeout_s: float = 60.0, upgrade_old: bool = False
) -> pd.DataFrame:
    """The rows of ``sql`` with its ``?`` placeholders bound to ``params`` (values are never pasted into SQL), from an
    hbir database of today's schema (``upgrade_old``: an older one is migrated first); QueryError when there is no
    database, HbirError for one that is not hbir's."""
    require_current(db, lock_timeout_s, upgrade_old)
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        return connection.execute(sql, params or []).df()


def read_only_query(
    db: str,
    sql: str,
    lock_timeout_s: float = 60.0,
    timeout_s: float = 60.0,
    memory_limit: str = "4GB",
) -> pd.DataFrame:
    """Answer ``sql`` over the results database; refuse anything but reads (and any file access).

    The query runs on a snapshot of the database file, so that however long it takes it never holds the file's lock
    (a training run keeps writing its steps meanwhile), within ``memory_limit`` (DuckDB's); it is interrupted after
    ``timeout_s`` seconds or at Ctrl-C, with a QueryError saying so.
    """
    require_current(db, lock_timeout_s)
    with snapshot(db, lock_timeout_s) as copy, connect(copy, read_only=True) as connection:
        statements = _read_statements(connection, sql)
        connection.execute("SET enable_external_access = false")
        connection.execute("SET memory_limit = ?", [memory_limit])
        return _run_interruptibly(connection, statements, timeout_s)


@contextmanager
def snapshot(db: str, lock_timeout_s: float = 60.0) -> Iterator[str]:
    """A private copy of the database file (and its write-ahead log), taken while no writer has the file open, and
    removed afterwards; a MotherDuck database is read as it is."""
    if db.startswith("md:"):
        yield db
        return
    with tempfile.TemporaryDirectory(prefix="hbir-query-") as folder:
        copy = Path(folder) / Path(db).name
        with connect(db, read_only=True, lock_timeout_s=lock_timeout_s):  # a writer cannot be half-way meanwhile
            shutil.copyfile(db, copy)
            if Path(f"{db}.wal").exists():
                shutil.copyfile(f"{db}.wal", f"{copy}.wal")
        yield str(copy)


def _read_statements(connection: duckdb.DuckDBPyConnection, sql: str) -> list:
    try:
        statements = connection.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(f"cannot parse SQL: {error}") from None
    if not statements:
        raise QueryError("no SQL statement given")
    refused = [s for s in statements if s.type.name not in READ_ONLY_STATEMENTS]
    if refused:
        raise QueryError(
            f"refused: only read queries (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN) are allowed; "
            f"got a {refused[0].type.name} statement: {refused[0].query.strip()[:80]}"
        )
    return statements


def _run_interruptibly(connection: duckdb.DuckDBPyConnection, statements: list, timeout_s: float) -> pd.DataFrame:
    """Run ``statements`` in a worker thread while this one waits (so Ctrl-C reaches Python), interrupting DuckDB
    on timeout or Ctrl-C; returns the last statement's rows."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            result = None
            for statement in statements:
                result = connection.execute(statement)
            outcome["rows"] = result.df()
        except BaseException as error:  # handed to the waiting thread
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=work, name="hbir-query", daemon=True).start()
    try:
        finished = done.wait(timeout_s)
    except KeyboardInterrupt:
        _interrupt(connection, done)
        raise QueryInterrupted("query interrupted (Ctrl-C); nothing was changed") from None
    if not finished:
        _interrupt(connection, done)
        raise QueryError(f"query stopped after {timeout_s:g} s: give more time with --timeout SECONDS, or narrow it")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, duckdb.OutOfMemoryException):
            raise QueryError(f"query needs more memory than its limit: {error}") from None
        if isinstance(error, duckdb.Error):
            raise QueryError(f"query failed: {error}") from None
        raise error
    return outcome["rows"]


def _interrupt(connection: duckdb.DuckDBPyConnection, done: threading.Event) -> None:
    """Interrupt DuckDB until the worker thread is done: an interrupt that comes before the statement has started
    (a loaded machine, a Ctrl-C right after the thread began) is lost, so it is repeated."""
    connection.interrupt()
    while not done.wait(0.2):
        connection.interrupt()
