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
    """
    CREATE TABLE train_steps (
        run_id VARCHAR NOT NULL,
        step INTEGER NOT NULL,              -- 1 .. train.steps; each step once, also across resumes
        loss DOUBLE NOT NULL,
        lr DOUBLE NOT NULL,                 -- the learning rate this step's update used
        batch_kind VARCHAR NOT NULL CHECK (batch_kind IN ('mono', 'cross')),
        dataset VARCHAR NOT NULL,
        query_langs VARCHAR[] NOT NULL,     -- per pair of the batch, in batch order
        passage_langs VARCHAR[] NOT NULL,
        examples_per_s DOUBLE NOT NULL,     -- pairs per second of this step (tokenize + forward + backward + update)
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE artifacts (
        run_id VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,              -- model | index | report | plot ...
        path VARCHAR NOT NULL,
        sha256 VARCHAR                      -- of the file, or of a model directory's weights file
    );
    """,
    """
    CREATE TABLE metrics (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        setting VARCHAR NOT NULL CHECK (setting IN ('mono', 'cross', 'multi')),
        query_lang VARCHAR NOT NULL,
        corpus_lang VARCHAR NOT NULL,       -- 'all' for multi: the pool of every language
        metric VARCHAR NOT NULL,            -- map | mrr@10 | recall@1 | recall@10 | recall@100 | ndcg@10
        value DOUBLE NOT NULL,              -- mean over the queries that have a relevant candidate in the corpus
        n_queries BIGINT NOT NULL,
        PRIMARY KEY (run_id, dataset, setting, query_lang, corpus_lang, metric)
    );
    CREATE TABLE per_query (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        setting VARCHAR NOT NULL,
        query_lang VARCHAR NOT NULL,
        corpus_lang VARCHAR NOT NULL,
        qid VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        value DOUBLE NOT NULL
    );
    CREATE TABLE language_bias (
        run_id VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        query_lang VARCHAR NOT NULL,
        rank_distance DOUBLE,               -- mean over queries of max - min rank of their relevant candidates
        same_lang_first_rate DOUBLE NOT NULL,  -- share of queries whose best-ranked relevant is in their language
        n_queries BIGINT NOT NULL,
        PRIMARY KEY (run_id, dataset, query_lang)
    );
    -- a setting's summary: the mean over its language pairs (XQuAD-R: 11 mono, 110 cross, 11 multi)
    CREATE VIEW run_summary AS
        SELECT run_id, dataset, setting, metric, avg(value) AS value, count(*) AS n_pairs
        FROM metrics GROUP BY run_id, dataset, setting, metric;
    """,
    """
    -- runs: status 'skipped' (a scheduled retrain that found nothing new), the fingerprint of what a training run
    -- learns from, and a note; DuckDB cannot alter a CHECK constraint, so the table is rebuilt
    CREATE TABLE runs_v4 (
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        status VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'skipped')),
        error VARCHAR,
        strategy VARCHAR,
        alpha DOUBLE,
        model_source VARCHAR,
        seed BIGINT,
        config JSON NOT NULL,
        git_revision VARCHAR,
        device VARCHAR,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        inputs_fingerprint VARCHAR,         -- SHA-256 of the training data's files and the settings (not paths)
        note VARCHAR,                       -- why a run was skipped, what a retrain decided
        study_id VARCHAR                    -- the study the run belongs to (hbir study)
    );
    INSERT INTO runs_v4 BY NAME SELECT * FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_v4 RENAME TO runs;
    -- the models scheduled retraining trained, scored on the evaluation data against the champion of the moment
    CREATE TABLE models (
        run_id VARCHAR PRIMARY KEY,         -- the run that trained it
        path VARCHAR NOT NULL,
        sha256 VARCHAR NOT NULL,            -- of its weights file
        eval_datasets VARCHAR[] NOT NULL,
        multi_map DOUBLE NOT NULL,          -- multilingual mAP, mean over eval_datasets
        rival_run_id VARCHAR,               -- the champion it was compared with (NULL: there was none)
        rival_multi_map DOUBLE,             -- that champion's multilingual mAP on the same data
        champion BOOLEAN NOT NULL,          -- the current champion: one row at most
        created_at TIMESTAMP NOT NULL,
        promoted_at TIMESTAMP               -- when it became champion (NULL: it did not beat the champion)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# The tables a run's outcome fills, written together by ``finish_run`` (train_steps are written during training).
RESULT_TABLES = ("dataset_versions", "validations", "metrics", "per_query", "language_bias", "artifacts")
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
    inputs_fingerprint: str | None = None
    note: str | None = None
    study_id: str | None = None


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
    (row,) = connection.execute("SELECT max(version) FROM schema_version").fetchall()
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


def start_run(db: str, run: RunRecord, lock_timeout_s: float = 60.0, resume: bool = False) -> bool:
    """Record ``run`` as running (its own short transaction, so ``hbir runs`` shows it meanwhile).

    With ``resume``, a run of the same id that did not complete (killed or failed) and has the same kind and config
    is marked running again. Returns whether it was resumed; HbirError if the id is taken otherwise.
    """
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        found = connection.execute("SELECT status, kind, config FROM runs WHERE run_id = ?", [run.run_id]).fetchall()
        if not found:
            _insert_run(connection, run)
            return False
        _check_resumable(run, *found[0], resume=resume)
        connection.execute(
            "UPDATE runs SET status = 'running', error = NULL, finished_at = NULL, device = ? WHERE run_id = ?",
            [run.device, run.run_id],
        )
        return True


def record_skipped_run(db: str, run: RunRecord, lock_timeout_s: float = 60.0) -> None:
    """Record ``run`` as skipped: started and finished now, nothing else written (``run.note`` says why)."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        _insert_run(connection, run, status="skipped")


def _insert_run(connection: duckdb.DuckDBPyConnection, run: RunRecord, status: str = "running") -> None:
    now = _now()
    connection.execute(
        "INSERT INTO runs (run_id, kind, status, strategy, alpha, model_source, seed, config, git_revision,"
        " device, started_at, finished_at, inputs_fingerprint, note, study_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run.run_id,
            run.kind,
            status,
            run.strategy,
            run.alpha,
            run.model_source,
            run.seed,
            json.dumps(run.config, default=str),
            run.git_revision,
            run.device,
            now,
            None if status == "running" else now,
            run.inputs_fingerprint,
            run.note,
            run.study_id,
        ],
    )


def _check_resumable(run: RunRecord, status: str, kind: str, config: str, resume: bool) -> None:
    taken = f"run id {run.run_id!r} is taken by a {status} {kind} run"
    if not resume or kind != run.kind:
        raise HbirError(f"{taken}: choose another --run-id")
    if status == "completed":
        raise HbirError(f"{taken}: it has nothing left to do; choose another --run-id for a new run")
    changed = _changed_keys(json.loads(config), json.loads(json.dumps(run.config, default=str)))
    if changed:
        raise HbirError(
            f"{taken} with other settings ({', '.join(changed[:5])} differ): resume it with the settings it "
            "started with, or choose another --run-id"
        )


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new else [prefix.rstrip(".") or "config"]
    keys = sorted(set(old) | set(new))
    return [changed for key in keys for changed in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]


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


def write_train_steps(db: str, run_id: str, steps: pd.DataFrame, lock_timeout_s: float = 60.0) -> None:
    """Append training-step rows (columns as the ``train_steps`` table, without run_id)."""
    if len(steps):
        with connect(db, lock_timeout_s=lock_timeout_s) as connection:
            migrate(connection)
            connection.register("incoming", steps.assign(run_id=run_id))
            columns = ", ".join(steps.columns.tolist() + ["run_id"])
            connection.execute(f"INSERT INTO train_steps ({columns}) SELECT {columns} FROM incoming")


def delete_train_steps_after(db: str, run_id: str, step: int, lock_timeout_s: float = 60.0) -> int:
    """Forget the steps of ``run_id`` after ``step`` (they are trained again on resume); returns how many."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        deleted = connection.execute(
            "DELETE FROM train_steps WHERE run_id = ? AND step > ? RETURNING step", [run_id, step]
        ).fetchall()
        return len(deleted)


def train_curve(db: str, run_id: str, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """The ``train_steps`` rows of ``run_id`` (step, loss, lr, batch_kind, ...), by step."""
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        return connection.execute("SELECT * FROM train_steps WHERE run_id = ? ORDER BY step", [run_id]).df()


@dataclass(frozen=True)
class TrainStepsLog:
    """The ``train_steps`` rows of one run, as the trainer's step log."""

    db: str
    run_id: str
    lock_timeout_s: float = 60.0

    def write(self, rows: pd.DataFrame) -> None:
        write_train_steps(self.db, self.run_id, rows, self.lock_timeout_s)

    def truncate_after(self, step: int) -> None:
        delete_train_steps_after(self.db, self.run_id, step, self.lock_timeout_s)


def run_info(db: str, run_id: str, lock_timeout_s: float = 60.0) -> dict[str, Any]:
    """The ``runs`` row of ``run_id`` as a dict; HbirError if there is none."""
    if not db.startswith("md:") and not Path(db).exists():
        raise HbirError(f"results database {db} does not exist: there is no run {run_id!r}")
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        found = connection.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
    if found.empty:
        raise HbirError(f"no run {run_id!r} in {db}: `hbir runs` lists the runs")
    return found.iloc[0].to_dict()


def trained_model(db: str, run_id: str, lock_timeout_s: float = 60.0) -> Path:
    """The model directory a completed run saved (its ``model`` artifact); HbirError naming what is wrong."""
    if not db.startswith("md:") and not Path(db).exists():
        raise HbirError(f"results database {db} does not exist: no run {run_id!r} to take a model from")
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        found = connection.execute(
            "SELECT r.status, a.path FROM runs r LEFT JOIN artifacts a ON a.run_id = r.run_id AND a.kind = 'model' "
            "WHERE r.run_id = ?",
            [run_id],
        ).fetchall()
    if not found:
        raise HbirError(f"no run {run_id!r} in {db}: `hbir runs` lists the runs")
    status, path = found[0]
    if path is None:
        raise HbirError(f"run {run_id!r} ({status}) saved no model: give a completed train run")
    if not (Path(path) / "config.json").exists():
        raise HbirError(f"run {run_id!r} saved its model in {path}, which is gone or incomplete")
    return Path(path)


def last_retrained(db: str, lock_timeout_s: float = 60.0) -> dict[str, Any] | None:
    """The newest model scheduled retraining trained: {run_id, inputs_fingerprint, finished_at}; None if none."""
    if not db.startswith("md:") and not Path(db).exists():
        return None
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        found = connection.execute(
            "SELECT m.run_id, r.inputs_fingerprint, r.finished_at FROM models m JOIN runs r USING (run_id) "
            "ORDER BY m.created_at DESC LIMIT 1"
        ).df()
    return None if found.empty else found.iloc[0].to_dict()


def champion(db: str, lock_timeout_s: float = 60.0) -> dict[str, Any] | None:
    """The ``models`` row of the current champion; None if there is none yet."""
    if not db.startswith("md:") and not Path(db).exists():
        return None
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        found = connection.execute("SELECT * FROM models WHERE champion").df()
    return None if found.empty else found.iloc[0].to_dict()


def add_model(db: str, model: dict[str, Any], promote: bool, note: str, lock_timeout_s: float = 60.0) -> None:
    """Add a retrained model (``models`` columns but champion and the times); with ``promote`` it becomes the one
    champion. ``note`` goes on its run. One transaction."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        now = _now()
        connection.execute("BEGIN TRANSACTION")
        try:
            if promote:
                connection.execute("UPDATE models SET champion = false WHERE champion")
            row = {**model, "champion": promote, "created_at": now, "promoted_at": now if promote else None}
            columns = ", ".join(row)
            connection.execute(
                f"INSERT INTO models ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )
            connection.execute("UPDATE runs SET note = ? WHERE run_id = ?", [note, model["run_id"]])
            connection.execute("COMMIT")
        except Exception:
            connection.execute("ROLLBACK")
            raise


def read_only_query(db: str, sql: str, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """Answer ``sql`` over the results database; refuse anything but reads (and any file access)."""
    if not db.startswith("md:") and not Path(db).exists():
        raise QueryError(f"results database {db} does not exist yet: run `hbir validate` first, or set HBIR_DB")
    upgrade(db, lock_timeout_s)
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
