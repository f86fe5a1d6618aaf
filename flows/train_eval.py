"""The ``train-eval`` flow: ingest -> validate -> build batches -> train -> embed -> index -> evaluate -> report ->
store, one run of hbir recorded in DuckDB.

    hbir run --profile smoke                                    # in this process, no server (Prefect's ephemeral mode)
    prefect deployment run 'train-eval/train-eval' -p profile=smoke --watch   # on a work pool (prefect.yaml)
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows import steps
from hbir.app.records import new_run_id


def run_name() -> str:
    """The flow run is named after the hbir run: the given run id, else a new one the flow then records."""
    return flow_run.parameters.get("run_id") or new_run_id("train-eval")


@flow(name="train-eval", flow_run_name=run_name, log_prints=True)
def train_eval(
    profile: str = "cpu",
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    study_id: str | None = None,
) -> str:
    """Train ``model.source`` on ``data.train`` with ``train.strategy`` batches, evaluate it on ``data.eval``; returns
    the run id. ``overrides``: dotted keys, e.g. {"train.steps": 50, "data.train": ["mlqa-r"]}; ``train.steps`` 0
    evaluates ``model.source`` as it is. The id of a failed or killed run continues it."""
    config = steps.configure(profile, config_path, overrides)
    run_id = steps.start(config, run_id or flow_run.name, study_id)
    tables = steps.ingest(config, run_id)
    steps.validate(config, run_id, tables)
    pairs = steps.build_batches(config, run_id, tables)
    model_dir = steps.train(config, run_id, pairs)
    evaluate_model(config, run_id, tables, model_dir)
    return run_id


def evaluate_model(config, run_id: str, tables: dict[str, str], model_dir: str) -> None:
    """The flows' common end: embed, index and evaluate on every dataset of ``data.eval``, report, store, publish."""
    for dataset in config.data.eval:
        vectors = steps.embed(config, run_id, model_dir, tables[dataset])
        indexes = steps.index(config, run_id, dataset, tables[dataset], vectors)
        steps.evaluate(config, run_id, dataset, tables[dataset], vectors, indexes)
    report = steps.report(config, run_id, model_dir)
    steps.store(config, run_id)
    steps.publish(config, run_id, report)
