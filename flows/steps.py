"""The pipeline's stages (``hbir/app/stages.py``) and the application's steps as Prefect tasks: thin wrappers that
add retries, names and log lines.

No task result is cached by Prefect: hbir keeps its own caches (ingested tables by the source files' fingerprint,
embeddings by the model's and the texts'), which check that their files are there, while a Prefect cache would hand
back paths to files that were moved or deleted. Only the steps that can fail for a passing reason (a locked
database, a busy file system, a killed training process) are retried; a user's mistake (a failed contract, a
diverged loss) is never retried.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.embedding import embed_shards
from hbir.app import records, stages
from hbir.core.config import Config, load_config
from hbir.core.errors import HbirError


def _not_a_user_error(task, task_run, state) -> bool:
    """Retry only what may pass on a second try: not a HbirError (bad input, a diverged loss) unless it says it is
    retryable (a rank that died: the retry resumes from the last checkpoint)."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, HbirError) or getattr(error, "retryable", False)


@task(name="configure", cache_policy=NO_CACHE)
def configure(profile: str, config_path: str | None, overrides: dict[str, Any] | None) -> Config:
    return load_config(profile, config_path, overrides or {})


@task(name="start-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def start(config: Config, run_id: str | None, study_id: str | None = None) -> str:
    return records.start(config, run_id, study_id=study_id)[0]


@task(name="start-merge-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def start_merge(config: Config, run_id: str | None, parent_run: str, study_id: str | None = None) -> str:
    return records.start(config, run_id, kind="merge", study_id=study_id, model_run=parent_run)[0]


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(config: Config, run_id: str) -> dict[str, str]:
    return stages.ingest(config, run_id, log=_log)


@task(name="validate", cache_policy=NO_CACHE)
def validate(config: Config, run_id: str, tables: dict[str, str]) -> None:
    stages.validate(config, run_id, tables)


@task(name="build-batches", cache_policy=NO_CACHE)
def build_batches(config: Config, run_id: str, tables: dict[str, str]) -> str | None:
    return stages.build_batches(config, run_id, tables)


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=_not_a_user_error)
def train(config: Config, run_id: str, pairs_path: str | None) -> str:
    return str(stages.train(config, run_id, pairs_path, log=_log).model_dir)


@task(name="merge", cache_policy=NO_CACHE)
def merge(config: Config, run_id: str, parent_run: str) -> str:
    """The model of run ``parent_run`` merged with its base at ``train.merge`` (``auto``: chosen on its dev split)."""
    return stages.merge(config, run_id, parent_run, config.train.merge, log=_log)


@task(name="embed", cache_policy=NO_CACHE)
def embed(config: Config, run_id: str, model_dir: str, tables_dir: str) -> str:
    """hbir's embedding cache is on the model and texts, not the run: another run with the same model reuses it.
    With ``eval.task_runner=dask`` the blocks and shards not cached yet are embedded on the Dask cluster first."""
    if config.eval.task_runner == "dask":
        on_dask = embed_shards.with_options(task_runner=stages.dask_task_runner(config.eval))
        done = on_dask(config, model_dir, tables_dir)
        _log(f"embedded {len(done)} blocks and shards on Dask ({config.eval.dask_address or 'a LocalCluster'})")
    return stages.embed(config, run_id, model_dir, tables_dir, log=_log)


@task(name="index", cache_policy=NO_CACHE)
def index(config: Config, run_id: str, dataset: str, tables_dir: str, vectors_path: str) -> list[str]:
    return stages.index(config, run_id, dataset, tables_dir, vectors_path)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    config: Config, run_id: str, dataset: str, tables_dir: str, vectors_path: str, index_paths: list[str]
) -> dict[str, float]:
    return stages.evaluate(config, run_id, dataset, tables_dir, vectors_path, index_paths)


@task(name="report", cache_policy=NO_CACHE)
def report(config: Config, run_id: str, model_dir: str) -> str:
    return stages.report(config, run_id, model_dir)


@task(name="store", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def store(config: Config, run_id: str) -> dict[str, int]:
    return records.store_results(config, run_id)


@task(name="publish", cache_policy=NO_CACHE)
def publish(config: Config, run_id: str, report_path: str) -> None:
    """Prefect artifacts of the run: the setting summaries as a table, and the report with its plots inlined."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from flows.artifacts import artifact_key, report_markdown, summary_rows

    key = artifact_key(run_id)
    create_table_artifact(
        table=summary_rows(config, run_id), key=f"{key}-summary",
        description=f"hbir run {run_id}: mean over language pairs, per dataset and setting",
    )  # fmt: skip
    create_markdown_artifact(
        markdown=report_markdown(Path(report_path)), key=f"{key}-report", description=f"hbir run {run_id}: report"
    )


@task(name="decide-retrain", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def decide_retrain(config: Config):
    from hbir.app import retrain

    decision = retrain.decide(config)
    _log(("retraining: " if decision.retrain else "not retraining: ") + decision.reason)
    return decision


@task(name="record-skipped", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record_skipped(config: Config, decision) -> str:
    from hbir.app import retrain

    return retrain.record_skipped(config, decision)


@task(name="promote", cache_policy=NO_CACHE)
def promote(config: Config, run_id: str):
    from hbir.app import retrain

    promotion = retrain.promote(config, run_id)
    _log(f"run {run_id}: {promotion.note}")
    return promotion


@task(name="plan-study", cache_policy=NO_CACHE)
def plan_study(study_path: str | None, profile: str | None, overrides: dict[str, Any] | None):
    from hbir.app import study

    plan = study.plan(study_path, profile, overrides)
    done = len(plan.points) - len(plan.pending)
    _log(f"study {plan.study_id}: {len(plan.points)} runs, {done} completed before, {len(plan.pending)} to run")
    return plan


@task(name="parent-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def parent_model(point) -> str | None:
    """The run whose model a merged point of a study merges, when that model is there; None: train the point."""
    from hbir.app import study

    parent = study.parent_model(point.config, point)
    if parent is not None:
        _log(f"run {point.run_id}: merging the model of run {parent} (the same training) instead of training again")
    return parent


@task(name="check-study", cache_policy=NO_CACHE)
def check_study(plan, completed: dict[str, bool]) -> None:
    """Fail (naming them) if any run of the study failed."""
    from hbir.app import study

    study.check_completed(plan, completed)


def _log(line: str) -> None:
    from prefect import get_run_logger

    get_run_logger().info(line)
