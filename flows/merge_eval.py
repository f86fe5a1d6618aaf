"""The ``merge-eval`` flow: ingest -> validate -> merge a finished run's model with its base model (WiSE-FT) ->
embed -> index -> evaluate -> report -> store, recorded as a ``merge`` run whose parent is that run.

    hbir merge --run my-run --weight auto       # the same, in this process without Prefect
    hbir study                                  # a study's merged arms, from their parent runs' models

``train.merge`` is the weight on the fine-tuned model (``auto``: chosen on the parent run's dev split).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows import steps
from flows.train_eval import evaluate_model
from hbir.app.records import new_run_id


def run_name() -> str:
    return flow_run.parameters.get("run_id") or new_run_id("merge")


@flow(name="merge-eval", flow_run_name=run_name, log_prints=True)
def merge_eval(
    parent_run: str,
    profile: str = "cpu",
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
    study_id: str | None = None,
) -> str:
    """Merge the model run ``parent_run`` trained with its base at ``train.merge`` and evaluate it on ``data.eval``;
    returns the run id."""
    config = steps.configure(profile, config_path, overrides)
    run_id = steps.start_merge(config, run_id or flow_run.name, parent_run, study_id)
    tables = steps.ingest(config, run_id)
    steps.validate(config, run_id, tables)
    model_dir = steps.merge(config, run_id, parent_run)
    evaluate_model(config, run_id, tables, model_dir)
    return run_id
