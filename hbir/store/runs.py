"""Runs in the results database: a run starts as ``running``, its rows and final status land in one transaction,
its training steps as they are trained; and what other commands read back about a run.

    start_run(db, RunRecord(run_id, kind, config))       # running (or resumed, for the same settings)
    TrainStepsLog(db, run_id).write(steps)               # during training
    finish_run(db, run_id, "completed", rows)            # every result row and the status, all or nothing
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from hbir.core.config import PLACEMENT_SETTINGS
from hbir.core.errors import HbirError
from hbir.store.database import connect, exists, now, require_current
from hbir.store.ownership import describe_owner, owner_gone, this_process
from hbir.store.query import read
from hbir.store.schema import migrate


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
    parent_run_id: str | None = None  # the run whose trained model this run used (eval --model-run, merge)
    world_size: int | None = None  # training runs: ranks
    micro_batch_size: int | None = None  # training runs: gradient caching's micro-batch


def start_run(db: str, run: RunRecord, lock_timeout_s: float = 60.0, resume: bool = False) -> bool:
    """Record ``run`` as running (its own short transaction, so ``hbir runs`` shows it meanwhile).

    With ``resume``, a run of the same id that did not complete (killed or failed) and has the same kind and config
    is marked running again. A ``running`` run of the id whose process is gone (``ownership``) is marked failed
    first; one whose process is alive is refused, naming it. Returns whether it was resumed; HbirError if the id is
    taken otherwise.
    """
    host, pid = this_process()
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        found = connection.execute(
            "SELECT status, kind, config, host, pid, heartbeat_at, started_at FROM runs WHERE run_id = ?", [run.run_id]
        ).fetchall()
        if not found:
            _insert_run(connection, run)
            return False
        status, kind, config, owner_host, owner_pid, heartbeat_at, started_at = found[0]
        if status == "running" and (owner_host, owner_pid) != (host, pid):
            if not owner_gone(owner_host, owner_pid, heartbeat_at or started_at, now()):
                raise HbirError(
                    f"run id {run.run_id!r} is being run by {describe_owner(owner_host, owner_pid)} (a {kind} run "
                    f"started {started_at:%Y-%m-%d %H:%M:%S} UTC): wait for it, or choose another --run-id"
                )
            status = _fail_stale(connection, run.run_id, owner_host, owner_pid)
        _check_resumable(run, status, kind, config, resume=resume)
        connection.execute(
            "UPDATE runs SET status = 'running', error = NULL, finished_at = NULL, device = ?, host = ?, pid = ?, "
            "heartbeat_at = ?, config = ?, world_size = ?, micro_batch_size = ? WHERE run_id = ?",
            [
                run.device,
                host,
                pid,
                now(),
                json.dumps(run.config, default=str),
                run.world_size,
                run.micro_batch_size,
                run.run_id,
            ],  # fmt: skip
        )
        return True


def _fail_stale(connection: duckdb.DuckDBPyConnection, run_id: str, host: str | None, pid: int | None) -> str:
    """Mark a stale run failed, saying why; returns its new status."""
    connection.execute(
        "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE run_id = ?",
        [now(), f"stale: its {describe_owner(host, pid)} was gone; marked failed by hbir", run_id],
    )
    return "failed"


def list_runs(db: str, limit: int, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """The latest ``limit`` runs, newest first, for ``hbir runs``: a running run whose process is gone shows
    status ``stale``."""
    found = read(
        db,
        "SELECT r.run_id, kind, status, strategy, alpha, model_source, started_at, finished_at, "
        "CASE WHEN m.champion THEN 'champion' WHEN m.promoted_at IS NOT NULL THEN 'former champion' "
        "WHEN m.run_id IS NOT NULL THEN 'not promoted' END AS model, "
        "left(coalesce(error, note), 100) AS note, host, pid, coalesce(heartbeat_at, started_at) AS heartbeat_at "
        "FROM runs r LEFT JOIN models m USING (run_id) ORDER BY started_at DESC LIMIT ?",
        [limit],
        lock_timeout_s,
    )
    at = now()
    stale = [
        row.status == "running" and owner_gone(row.host, None if pd.isna(row.pid) else row.pid, row.heartbeat_at, at)
        for row in found.itertuples()
    ]
    found.loc[stale, "status"] = "stale"
    return found.drop(columns=["host", "pid", "heartbeat_at"])


def fail_stale_runs(db: str, lock_timeout_s: float = 60.0) -> list[str]:
    """Mark every stale run failed (``hbir runs --fail-stale``); returns their ids."""
    require_current(db, lock_timeout_s)
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        running = connection.execute(
            "SELECT run_id, host, pid, coalesce(heartbeat_at, started_at) FROM runs WHERE status = 'running'"
        ).fetchall()
        at, failed = now(), []
        for run_id, host, pid, heartbeat_at in running:
            if owner_gone(host, pid, heartbeat_at, at):
                _fail_stale(connection, run_id, host, pid)
                failed.append(run_id)
        return failed


def record_skipped_run(db: str, run: RunRecord, lock_timeout_s: float = 60.0) -> None:
    """Record ``run`` as skipped: started and finished now, nothing else written (``run.note`` says why)."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        _insert_run(connection, run, status="skipped")


def _insert_run(connection: duckdb.DuckDBPyConnection, run: RunRecord, status: str = "running") -> None:
    at = now()
    host, pid = this_process()
    connection.execute(
        "INSERT INTO runs (run_id, kind, status, strategy, alpha, model_source, seed, config, git_revision,"
        " device, started_at, finished_at, inputs_fingerprint, note, study_id, parent_run_id, host, pid, heartbeat_at,"
        " world_size, micro_batch_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            at,
            None if status == "running" else at,
            run.inputs_fingerprint,
            run.note,
            run.study_id,
            run.parent_run_id,
            host,
            pid,
            at,
            run.world_size,
            run.micro_batch_size,
        ],
    )


def _check_resumable(run: RunRecord, status: str, kind: str, config: str, resume: bool) -> None:
    taken = f"run id {run.run_id!r} is taken by a {status} {kind} run"
    if not resume or kind != run.kind:
        raise HbirError(f"{taken}: choose another --run-id")
    if status == "completed":
        raise HbirError(f"{taken}: it has nothing left to do; choose another --run-id for a new run")
    changed = changed_keys(json.loads(config), json.loads(json.dumps(run.config, default=str)))
    changed = [key for key in changed if key not in PLACEMENT_SETTINGS]  # resumes on any number of ranks
    if changed:
        raise HbirError(
            f"{taken} with other settings ({', '.join(changed[:5])} differ): resume it with the settings it "
            "started with, or choose another --run-id"
        )


def changed_keys(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between a recorded config and the current one. Keys the recorded config
    lacks are settings added by a later hbir, after the run was recorded: they are not compared."""
    if not isinstance(recorded, dict) or not isinstance(current, dict):
        return [] if recorded == current else [prefix.rstrip(".") or "config"]
    return [
        changed
        for key in sorted(recorded)
        for changed in changed_keys(recorded[key], current.get(key), f"{prefix}{key}.")
    ]


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
                [status, error, now(), run_id],
            )
            connection.execute("COMMIT")
        except Exception:
            connection.execute("ROLLBACK")
            raise


def write_train_steps(db: str, run_id: str, steps: pd.DataFrame, lock_timeout_s: float = 60.0) -> None:
    """Append training-step rows (columns as the ``train_steps`` table, without run_id), and note that the run's
    process is alive (its heartbeat)."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        if len(steps):
            connection.register("incoming", steps.assign(run_id=run_id))
            columns = ", ".join(steps.columns.tolist() + ["run_id"])
            connection.execute(f"INSERT INTO train_steps ({columns}) SELECT {columns} FROM incoming")
        connection.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", [now(), run_id])


def delete_train_steps_after(db: str, run_id: str, step: int, lock_timeout_s: float = 60.0) -> int:
    """Forget the steps (and dev metrics) of ``run_id`` after ``step``: they are trained again on resume; returns how
    many steps."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        deleted = connection.execute(
            "DELETE FROM train_steps WHERE run_id = ? AND step > ? RETURNING step", [run_id, step]
        ).fetchall()
        connection.execute("DELETE FROM dev_metrics WHERE run_id = ? AND step > ?", [run_id, step])
        return len(deleted)


def train_curve(db: str, run_id: str, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """The ``train_steps`` rows of ``run_id`` (step, loss, lr, batch_kind, ...), by step."""
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        return connection.execute("SELECT * FROM train_steps WHERE run_id = ? ORDER BY step", [run_id]).df()


def write_dev_metrics(db: str, run_id: str, step: int, rows: pd.DataFrame, lock_timeout_s: float = 60.0) -> None:
    """Append the dev metrics measured after ``step`` (columns dataset, setting, metric, value)."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        connection.register("incoming", rows.assign(run_id=run_id, step=step))
        connection.execute(
            "INSERT INTO dev_metrics (run_id, step, dataset, setting, metric, value) "
            "SELECT run_id, step, dataset, setting, metric, value FROM incoming"
        )


def dev_curve(db: str, run_id: str, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """The ``dev_metrics`` rows of ``run_id`` (step, dataset, setting, metric, value), by step."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        return connection.execute(
            "SELECT step, dataset, setting, metric, value FROM dev_metrics WHERE run_id = ? ORDER BY step, dataset, "
            "setting, metric",
            [run_id],
        ).df()


def record_model_choice(
    db: str, run_id: str, selected_step: int | None, merge_weight: float | None, lock_timeout_s: float = 60.0
) -> None:
    """Record what the run's model is: which step's weights (train.select), merged with what weight (train.merge)."""
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        connection.execute(
            "UPDATE runs SET selected_step = ?, merge_weight = ? WHERE run_id = ?",
            [selected_step, merge_weight, run_id],
        )


@dataclass(frozen=True)
class TrainStepsLog:
    """The ``train_steps`` and ``dev_metrics`` rows of one run, as the trainer's step log."""

    db: str
    run_id: str
    lock_timeout_s: float = 60.0

    def write(self, rows: pd.DataFrame) -> None:
        write_train_steps(self.db, self.run_id, rows, self.lock_timeout_s)

    def write_dev(self, step: int, rows: pd.DataFrame) -> None:
        write_dev_metrics(self.db, self.run_id, step, rows, self.lock_timeout_s)

    def dev_curve(self) -> pd.DataFrame:
        return dev_curve(self.db, self.run_id, self.lock_timeout_s)

    def truncate_after(self, step: int) -> None:
        delete_train_steps_after(self.db, self.run_id, step, self.lock_timeout_s)


def run_info(db: str, run_id: str, lock_timeout_s: float = 60.0) -> dict[str, Any]:
    """The ``runs`` row of ``run_id`` as a dict; HbirError if there is none."""
    if not exists(db):
        raise HbirError(f"results database {db} does not exist: there is no run {run_id!r}")
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        found = connection.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
    if found.empty:
        raise HbirError(f"no run {run_id!r} in {db}: `hbir runs` lists the runs")
    return found.iloc[0].to_dict()


def trained_model(db: str, run_id: str, lock_timeout_s: float = 60.0) -> Path:
    """The model directory a completed run saved (its ``model`` artifact); HbirError naming what is wrong."""
    if not exists(db):
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
