"""A study's results carried from one results database to another: ``export_study`` writes the rows of its
completed runs (every table keyed by run id) as Parquet files with a manifest of row counts and checksums;
``import_study`` adds them to another database in one transaction. A study run on several machines, or on a
machine that does not keep its files, is continued and reported from the rows it exported (``hbir study`` skips
the imported runs; their models and run folders stay where they were made)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from hbir.core.errors import HbirError
from hbir.store.database import connect, now, require_current
from hbir.store.schema import SCHEMA_VERSION, migrate

FORMAT = "hbir-study-export"
MANIFEST = "manifest.json"
# the tables a run's rows are in (scheduled retraining's champion table `models` is not a study's)
RUN_TABLES = (
    "runs", "dataset_versions", "validations", "train_steps", "artifacts", "metrics", "per_query", "language_bias",
    "dev_metrics",
)  # fmt: skip
FILE_BYTES = 1_000_000  # a table's rows are split into files of about this size (DuckDB's FILE_SIZE_BYTES)
REPORT_METRICS = ("map", "rank_distance")  # the per-query rows `hbir report --study` and `hbir compare` test on


def export_study(
    db: str, study_id: str, out_dir: Path, per_query_metrics: tuple[str, ...] | None = REPORT_METRICS,
    lock_timeout_s: float = 60.0,
) -> dict:  # fmt: skip
    """Write the rows of study ``study_id``'s completed runs to ``out_dir`` (``<table>/data_<n>.parquet`` and
    ``manifest.json``), replacing what an earlier export left there; ``per_query_metrics``: the per-query rows
    kept (None: all). Returns the manifest."""
    require_current(db, lock_timeout_s)
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:
        run_ids = [
            run_id
            for (run_id,) in connection.execute(
                "SELECT run_id FROM runs WHERE study_id = ? AND status = 'completed' ORDER BY run_id", [study_id]
            ).fetchall()
        ]
        if not run_ids:
            shutil.rmtree(partial)
            raise HbirError(f"study {study_id!r} has no completed run in {db}: nothing to export")
        connection.execute("CREATE TEMP TABLE exported AS SELECT unnest(?::VARCHAR[]) AS run_id", [run_ids])
        tables = {}
        for table in RUN_TABLES:
            where = "run_id IN (SELECT run_id FROM exported)"
            if table == "per_query" and per_query_metrics is not None:
                connection.execute(
                    "CREATE TEMP TABLE kept_metrics AS SELECT unnest(?::VARCHAR[]) AS metric", [list(per_query_metrics)]
                )
                where += " AND metric IN (SELECT metric FROM kept_metrics)"
            folder = partial / table  # files of at most FILE_BYTES: a repository keeps no large file
            connection.execute(
                f"COPY (SELECT * FROM {table} WHERE {where} ORDER BY ALL) TO '{folder}' "
                f"(FORMAT parquet, COMPRESSION zstd, FILE_SIZE_BYTES {FILE_BYTES})"
            )
            rows = connection.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]
            files = [{"file": f"{table}/{file.name}", "sha256": _sha256(file)} for file in sorted(folder.iterdir())]
            tables[table] = {"files": files, "rows": rows}
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "study_id": study_id, "runs": run_ids,
        "per_query_metrics": None if per_query_metrics is None else list(per_query_metrics),
        "exported_at": now().isoformat(timespec="seconds"), "tables": tables,
    }  # fmt: skip
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    partial.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return manifest


def import_study(db: str, in_dir: Path, lock_timeout_s: float = 60.0) -> tuple[list[str], list[str]]:
    """Add the runs exported to ``in_dir`` to ``db`` (created or migrated as needed), all in one transaction;
    returns (imported, already there). A run already in ``db`` is skipped when it is the same run (completed,
    finished at the same time), else nothing is imported and the error names it."""
    in_dir = Path(in_dir)
    manifest = read_manifest(in_dir)
    run_ids = manifest["runs"]
    with connect(db, lock_timeout_s=lock_timeout_s) as connection:
        migrate(connection)
        connection.execute("BEGIN TRANSACTION")
        try:
            exported = _parquet(in_dir, manifest, "runs")
            found = connection.execute(
                "SELECT here.run_id, here.status = 'completed' AND here.finished_at = there.finished_at "
                f"FROM runs here JOIN read_parquet({exported}) there USING (run_id)"
            ).fetchall()
            other = sorted(run_id for run_id, same in found if not same)
            if other:
                raise HbirError(
                    f"{in_dir}: runs {', '.join(other)} are in {db} already and are not the runs exported (another "
                    "status or finish time); nothing was imported. Import into another database (HBIR_DB), or "
                    "remove those runs there first"
                )
            present = sorted(run_id for run_id, _ in found)
            new = [run_id for run_id in run_ids if run_id not in present]
            connection.execute("CREATE TEMP TABLE imported AS SELECT unnest(?::VARCHAR[]) AS run_id", [new or [""]])
            for table in RUN_TABLES:
                connection.execute(
                    f"INSERT INTO {table} BY NAME SELECT * FROM read_parquet({_parquet(in_dir, manifest, table)}) "
                    "WHERE run_id IN (SELECT run_id FROM imported)"
                )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return new, present


def read_manifest(in_dir: Path) -> dict:
    """The export's manifest, its files checked against their checksums; HbirError naming what is wrong."""
    path = in_dir / MANIFEST
    if not path.is_file():
        raise HbirError(f"{in_dir} is not a study export: it has no {MANIFEST} (write one with `hbir export-study`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise HbirError(f"{path}: not JSON ({error}); export the study again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise HbirError(f'{path}: field "format" must be "{FORMAT}" (found {manifest.get("format")!r})')
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise HbirError(
            f"{path}: exported by a newer hbir (schema version {manifest['schema_version']}; this hbir knows up to "
            f"{SCHEMA_VERSION}): upgrade hbir to import it"
        )
    for table in RUN_TABLES:
        entry = manifest.get("tables", {}).get(table)
        if entry is None:
            raise HbirError(f'{path}: field "tables" has no entry for {table!r}; export the study again')
        for part in _files(entry):
            file = in_dir / part["file"]
            if not file.is_file() or _sha256(file) != part["sha256"]:
                raise HbirError(
                    f"{file}: {'missing' if not file.is_file() else 'changed since it was exported'} (its sha256 is "
                    f"not the manifest's {part['sha256'][:12]}...); nothing was imported. Export the study again"
                )
    return manifest


def _files(entry: dict) -> list[dict]:
    """A table's files in the manifest: ``files``, or the one ``file`` of an export written before the split."""
    return entry["files"] if "files" in entry else [{"file": entry["file"], "sha256": entry["sha256"]}]


def _parquet(in_dir: Path, manifest: dict, table: str) -> str:
    """A table's files as a DuckDB list literal, for ``read_parquet``."""
    paths = [str(in_dir / part["file"]).replace("'", "''") for part in _files(manifest["tables"][table])]
    return "[" + ", ".join(f"'{path}'" for path in paths) + "]"


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()
