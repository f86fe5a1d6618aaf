"""The model registry: the models scheduled retraining trained, and which one is the champion."""

from __future__ import annotations

from typing import Any

from hbir.store.database import connect, exists, now
from hbir.store.schema import migrate


def last_retrained(db: str, lock_timeout_s: float = 60.0) -> dict[str, Any] | None:
    """The newest model scheduled retraining trained: {run_id, inputs_fingerprint, finished_at}; None if none."""
    if not exists(db):
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
    if not exists(db):
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
        at = now()
        connection.execute("BEGIN TRANSACTION")
        try:
            if promote:
                connection.execute("UPDATE models SET champion = false WHERE champion")
            row = {**model, "champion": promote, "created_at": at, "promoted_at": at if promote else None}
            columns = ", ".join(row)
            connection.execute(
                f"INSERT INTO models ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )
            connection.execute("UPDATE runs SET note = ? WHERE run_id = ?", [note, model["run_id"]])
            connection.execute("COMMIT")
        except Exception:
            connection.execute("ROLLBACK")
            raise
