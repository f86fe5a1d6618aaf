"""The commands' work as plain functions: each records itself as a run in the results database."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from hbir.config import Config
from hbir.errors import ContractError, HbirError
from tasks import store
from tasks.ingest import dataset_versions, ingest_dataset
from tasks.tables import DatasetTables

FAILURES_SHOWN = 5


def new_run_id(kind: str) -> str:
    """Sortable and unique: ``validate-20261125-101500-3f9a1c``."""
    return f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def git_revision() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def run_record(config: Config, kind: str, run_id: str | None = None) -> store.RunRecord:
    return store.RunRecord(
        run_id=run_id or new_run_id(kind),
        kind=kind,
        config=config.model_dump(mode="json"),
        strategy=config.train.strategy,
        alpha=config.train.mono_share,
        model_source=config.model.source,
        seed=config.train.seed,
        git_revision=git_revision(),
    )


def validate(config: Config, run_id: str | None = None, progress=print) -> tuple[str, pd.DataFrame]:
    """Ingest and validate every dataset of ``data.train`` and ``data.eval``; record the run.

    Returns the run id and the dataset versions. On bad data, records the run as failed (with the contract
    outcomes where the contracts ran), writes nothing else and raises a ``HbirError`` saying what is wrong.
    """
    run = run_record(config, "validate", run_id)
    db, timeout = config.db.path, config.db.lock_timeout_s
    store.start_run(db, run, lock_timeout_s=timeout)
    validations = pd.DataFrame()
    try:
        datasets = ingest(config, progress)
        results = check_contracts(config, datasets)
        validations = pd.DataFrame([asdict(result) for result in results])
        failed = [result for result in results if not result.success]
        if failed:
            raise ContractError(contract_failure_message(failed))
        versions = pd.concat([dataset_versions(d) for d in datasets], ignore_index=True) if datasets else pd.DataFrame()
    except BaseException as error:
        message = str(error) if isinstance(error, HbirError) else f"{type(error).__name__}: {error}"
        store.finish_run(db, run.run_id, "failed", {"validations": validations}, error=message, lock_timeout_s=timeout)
        raise
    rows = {"validations": validations, "dataset_versions": versions}  # finish_run skips empty tables
    store.finish_run(db, run.run_id, "completed", rows, lock_timeout_s=timeout)
    return run.run_id, versions


def ingest(config: Config, progress=print) -> list[DatasetTables]:
    datasets = []
    for name in dict.fromkeys(config.data.train + config.data.eval):
        progress(f"ingesting {name} from {config.data.dir}")
        datasets.append(ingest_dataset(config.data.dir, name, config.data.languages))
    return datasets


def check_contracts(config: Config, datasets: list[DatasetTables]) -> list[Any]:
    from data_contracts.validate import validate_datasets  # lazy: Great Expectations takes seconds to import

    data = config.data
    return validate_datasets(
        datasets,
        data.train,
        data.languages,
        data.fully_parallel,
        data.max_query_chars,
        data.max_candidate_chars,
        data.max_context_chars,
    )


def contract_failure_message(failed: list) -> str:
    lines = [f"{len(failed)} data contract(s) failed:"]
    for result in failed[:FAILURES_SHOWN]:
        lines.append(f"  {result.dataset}/{result.table_name}: {result.expectation}\n    {result.details}")
    if len(failed) > FAILURES_SHOWN:
        lines.append(f"  ... and {len(failed) - FAILURES_SHOWN} more (see the validations table)")
    return "\n".join(lines)
