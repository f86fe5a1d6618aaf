"""Reading the results database: user SQL answered read-only (``hbir query``), and the parameterised reads the
application's commands make (``read``)."""

from __future__ import annotations

from typing import Any

import duckdb
import pandas as pd

from hbir.core.errors import QueryError
from hbir.store.database import connect, exists, upgrade

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def read(db: str, sql: str, params: list[Any] | None = None, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """The rows of ``sql`` with its ``?`` placeholders bound to ``params`` (values are never pasted into SQL), from a
    database brought up to today's schema first; QueryError when there is no database."""
    _require_current(db, lock_timeout_s)
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        return connection.execute(sql, params or []).df()


def read_only_query(db: str, sql: str, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """Answer ``sql`` over the results database; refuse anything but reads (and any file access)."""
    _require_current(db, lock_timeout_s)
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


def _require_current(db: str, lock_timeout_s: float) -> None:
    """Refuse a database that is not there; migrate one written by an older hbir, so reads see today's tables."""
    if not exists(db):
        raise QueryError(f"results database {db} does not exist yet: run `hbir validate` first, or set HBIR_DB")
    upgrade(db, lock_timeout_s)
