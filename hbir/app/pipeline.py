"""The stages composed without Prefect, for ``hbir validate``, ``train``, ``eval`` and ``merge``: the same stage
functions (``hbir/app/stages.py``) the ``train-eval`` flow chains, each run recorded in the results database.

    run_id, versions = validate_run(config)                   # ingest, contracts
    run_id, result = train_run(config, run_id="my-run")       # + build batches, fine-tune (a killed my-run resumes)
    run_id, rows = eval_run(config, model_run="my-run")       # + embed, index, evaluate, report
    run_id, rows = merge_run(config, "my-run", weight=0.5)     # my-run's model merged with its base, evaluated
"""

from __future__ import annotations

import time

import pandas as pd

from hbir.app import records, stages
from hbir.app.stages import Log
from hbir.core.config import Config
from hbir.core.errors import ConfigError


def validate_run(config: Config, run_id: str | None = None, log: Log = print) -> tuple[str, pd.DataFrame]:
    """Ingest and validate every dataset of ``data.train`` and ``data.eval``; record the run.

    Returns the run id and the dataset versions. On bad data, records the run as failed (with the contract
    outcomes where the contracts ran), writes nothing else and raises a ``HbirError`` saying what is wrong. The
    run's rows folder is removed once they are stored: a validate run leaves nothing on disk.
    """
    run_id, _ = records.start(config, run_id, kind="validate", resume=False)
    try:
        tables = stages.ingest(config, run_id, log)
        stages.validate(config, run_id, tables)
        versions = records.kept_rows(config, run_id).get("dataset_versions", pd.DataFrame())
        records.store_results(config, run_id)
    finally:
        records.remove_rows(config, run_id)
    return run_id, versions


def train_run(config: Config, run_id: str | None = None, log: Log = print):
    """Ingest, validate, then fine-tune ``model.source`` on ``data.train``; record the run and its steps.

    Given the id of a run that was killed or failed, continues it from its last checkpoint (same settings only).
    Returns the run id and the ``TrainResult``.
    """
    if config.train.steps == 0:
        raise ConfigError("train.steps is 0: nothing to train (`hbir eval` evaluates model.source as it is)")
    run_id, resumed = records.start(config, run_id, kind="train")
    if resumed:
        log(f"resuming run {run_id}")
    tables = stages.ingest(config, run_id, log)
    stages.validate(config, run_id, tables)
    pairs = stages.build_batches(config, run_id, tables)
    result = stages.train(config, run_id, pairs, log)
    records.store_results(config, run_id)
    return run_id, result


def eval_run(
    config: Config, run_id: str | None = None, model_run: str | None = None, log: Log = print
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Ingest and validate, then evaluate ``model.source`` (or the model trained by run ``model_run``) on
    ``data.eval``: mono, cross and multi settings, language bias, a report; record it all as an ``eval`` run.

    Returns the run id and the rows written (metrics, per_query, language_bias, artifacts, ...).
    """
    run_id, _ = records.start(config, run_id, kind="eval", model_run=model_run, resume=False)
    tables = stages.ingest(config, run_id, log)
    stages.validate(config, run_id, tables)
    model_dir = stages.model_to_evaluate(config, run_id, model_run)
    return run_id, evaluate_model(config, run_id, tables, model_dir, log)


def merge_run(
    config: Config, parent_run: str, weight: float | str, run_id: str | None = None, log: Log = print
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Merge the model run ``parent_run`` trained with its base model (``weight`` on the fine-tuned one, WiSE-FT;
    ``auto``: chosen on that run's dev split), then evaluate the merged model on ``data.eval`` as ``eval_run`` does;
    recorded as a ``merge`` run whose parent is ``parent_run``. Returns the run id and the rows written."""
    run_id, _ = records.start(config, run_id, kind="merge", model_run=parent_run, resume=False)
    tables = stages.ingest(config, run_id, log)
    stages.validate(config, run_id, tables)
    model_dir = stages.merge(config, run_id, parent_run, weight, log)
    log(f"merged the model of run {parent_run} with its base model: {model_dir}")
    return run_id, evaluate_model(config, run_id, tables, model_dir, log)


def evaluate_model(
    config: Config, run_id: str, tables: dict[str, str], model_dir: str, log: Log = print
) -> dict[str, pd.DataFrame]:
    """Embed, index and evaluate ``model_dir`` on every dataset of ``data.eval``, report and store the run; returns
    the rows written."""
    if config.eval.task_runner == "dask":
        log("eval.task_runner=dask is for the Prefect flows (hbir run, the deployments; train.steps=0 evaluates "
            "model.source): this command embeds in its own process")  # fmt: skip
    for dataset in config.data.eval:
        started = time.perf_counter()
        vectors = stages.embed(config, run_id, model_dir, tables[dataset], log)
        embedded = time.perf_counter()
        indexes = stages.index(config, run_id, dataset, tables[dataset], vectors)
        summary = stages.evaluate(config, run_id, dataset, tables[dataset], vectors, indexes)
        log(
            f"{dataset}: embedded in {embedded - started:.0f} s, indexed and evaluated in "
            f"{time.perf_counter() - embedded:.1f} s; mAP "
            + ", ".join(f"{k.split()[0]} {v:.3f}" for k, v in summary.items())
        )
    stages.report(config, run_id, model_dir)
    rows = records.kept_rows(config, run_id)
    records.store_results(config, run_id)
    return rows
