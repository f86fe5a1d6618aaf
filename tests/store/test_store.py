"""The DuckDB results store: schema versions, one transaction per run, lock retries, read-only queries."""

import subprocess
import sys
import time

import duckdb
import pandas as pd
import pytest

from hbir.core.errors import HbirError, QueryError
from hbir.store.database import connect
from hbir.store.query import read_only_query
from hbir.store.runs import RunRecord, finish_run, start_run
from hbir.store.schema import SCHEMA_VERSION, migrate

VERSION_ROW = {"dataset": "d", "lang": "en", "fingerprint": "f", "n_queries": 1, "n_candidates": 2, "n_qrels": 1}


def _rows(db, sql):
    with duckdb.connect(str(db), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_migrations_are_versioned_and_idempotent(db_path):
    with connect(str(db_path)) as connection:
        assert migrate(connection) == 0
        assert migrate(connection) == SCHEMA_VERSION
    assert _rows(db_path, "SELECT max(version) FROM schema_version") == [(SCHEMA_VERSION,)]
    tables = {row[0] for row in _rows(db_path, "SHOW TABLES")}
    assert {"runs", "dataset_versions", "validations", "schema_version"} <= tables


def test_a_newer_schema_is_refused(db_path):
    with duckdb.connect(str(db_path)) as connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER); INSERT INTO schema_version VALUES (99)")
    with pytest.raises(HbirError, match="schema version 99"), connect(str(db_path)) as connection:
        migrate(connection)


def test_a_run_lands_whole_or_not_at_all(db_path):
    db = str(db_path)
    start_run(db, RunRecord("r1", "validate", {"k": 1}))
    bad = pd.DataFrame([{"dataset": "d", "table_name": "t", "expectation": "e", "success": True, "details": ""}])
    with pytest.raises(duckdb.Error):  # the second table lacks NOT NULL columns: the first must roll back too
        finish_run(
            db,
            "r1",
            "completed",
            {"dataset_versions": pd.DataFrame([VERSION_ROW]), "validations": bad.drop(columns="success")},
        )
    assert _rows(db_path, "SELECT status FROM runs") == [("running",)]
    assert _rows(db_path, "SELECT count(*) FROM dataset_versions") == [(0,)]
    finish_run(db, "r1", "completed", {"dataset_versions": pd.DataFrame([VERSION_ROW]), "validations": bad})
    assert _rows(db_path, "SELECT status, finished_at IS NOT NULL FROM runs") == [("completed", True)]
    assert _rows(db_path, "SELECT run_id, n_candidates FROM dataset_versions") == [("r1", 2)]


HOLD_LOCK = """
import sys, time, duckdb
connection = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.close()
"""


def _hold_lock(db_path, seconds):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db_path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_database_is_retried_not_lost(db_path):
    holder = _hold_lock(db_path, 1.5)
    started = time.monotonic()
    start_run(str(db_path), RunRecord("r1", "validate", {}), lock_timeout_s=30)
    assert time.monotonic() - started > 0.5  # it waited for the other process
    holder.wait()
    assert _rows(db_path, "SELECT run_id, status FROM runs") == [("r1", "running")]


def test_a_lock_held_too_long_is_a_clear_error(db_path):
    holder = _hold_lock(db_path, 10)
    try:
        with pytest.raises(HbirError, match="lock"):
            start_run(str(db_path), RunRecord("r1", "validate", {}), lock_timeout_s=0.5)
    finally:
        holder.kill()


def test_readers_see_a_run_while_it_is_going_on(db_path):
    start_run(str(db_path), RunRecord("r1", "validate", {}))
    # the writer holds no connection between its steps, so a read-only query gets in
    assert read_only_query(str(db_path), "SELECT status FROM runs")["status"].tolist() == ["running"]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM runs",
        "UPDATE runs SET status = 'failed'",
        "DROP TABLE runs",
        "CREATE TABLE x (a INT)",
        "COPY runs TO 'out.csv'",
        "ATTACH 'other.duckdb'",
        "SELECT 1; DELETE FROM runs",
        "INSTALL httpfs",
        "PRAGMA show_tables",
    ],
)
def test_query_refuses_statements_that_write(db_path, sql):
    start_run(str(db_path), RunRecord("r1", "validate", {}))
    with pytest.raises(QueryError, match="refused"):
        read_only_query(str(db_path), sql)
    assert _rows(db_path, "SELECT count(*) FROM runs") == [(1,)]


def test_query_cannot_touch_files(db_path, tmp_path):
    start_run(str(db_path), RunRecord("r1", "validate", {}))
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(QueryError, match="file system operations are disabled"):
        read_only_query(str(db_path), f"SELECT * FROM read_csv('{tmp_path / 'secret.csv'}')")


def test_query_answers_reads(db_path):
    start_run(str(db_path), RunRecord("r1", "validate", {}))
    answer = read_only_query(str(db_path), "WITH r AS (SELECT run_id FROM runs) SELECT count(*) AS n FROM r")
    assert answer["n"].tolist() == [1]
    assert "status" in read_only_query(str(db_path), "DESCRIBE runs")["column_name"].tolist()
