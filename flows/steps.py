"""The pipeline's stages (``hbir/app/stages.py``) and the application's steps as Prefect tasks: thin wrappers that
add caching, retries, names and log lines.

Ingestion is cached on the fingerprint of the source files, embeddings on the model's and the texts' fingerprints
(paths in, paths out: never a model object in a cache key). Only the steps that can fail for a passing reason (a
locked database, a busy file system) are retried; a failed contract is never retried.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from hbir.app import records, stages
from hbir.core.config import Config, load_config


def _ingest_key(context, parameters: dict[str, Any]) -> str:
    config: Config = parameters["config"]
    datasets = dict.fromkeys(config.data.train + config.data.eval)
    sources = [records.source_fingerprint(config, name) for name in datasets]
    return "ingest-" + hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def _embed_key(context, parameters: dict[str, Any]) -> str:
    from tasks.embedding import model_fingerprint

    model_fp = model_fingerprint(Path(parameters["model_dir"]))
    return "embed-" + stages.embed_key(model_fp, parameters["tables_dir"], parameters["config"])


@task(name="configure", cache_policy=NO_CACHE)
def configure(profile: str, config_path: str | None, overrides: dict[str, Any] | None) -> Config:
    return load_config(profile, config_path, overrides or {})


@task(name="start-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def start(config: Config, run_id: str | None, study_id: str | None = None) -> str:
    return records.start(config, run_id, study_id=study_id)[0]


@task(name="ingest", cache_key_fn=_ingest_key, persist_result=True)
def ingest(config: Config, run_id: str) -> dict[str, str]:
    return stages.ingest(config, run_id, log=_log)


@task(name="validate", cache_policy=NO_CACHE)
def validate(config: Config, run_id: str, tables: dict[str, str]) -> None:
    stages.validate(config, run_id, tables)


@task(name="build-batches", cache_policy=NO_CACHE)
def build_batches(config: Config, run_id: str, tables: dict[str, str]) -> str | None:
    return stages.build_batches(config, run_id, tables)


@task(name="train", cache_policy=NO_CACHE)
def train(config: Config, run_id: str, pairs_path: str | None) -> str:
    return str(stages.train(config, run_id, pairs_path, log=_log).model_dir)


@task(name="embed", cache_key_fn=_embed_key, persist_result=True)
def embed(config: Config, run_id: str, model_dir: str, tables_dir: str) -> str:
    """Cached on the model and texts, not the run: another run with the same model reuses the file."""
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
    from prefect.artifacts import create_markdown_artifact

    from flows.artifacts import artifact_key, report_markdown, summary_markdown

    key = artifact_key(run_id)
    create_markdown_artifact(
        markdown=summary_markdown(config, run_id), key=f"{key}-summary", description=f"hbir run {run_id}: summary"
    )
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


@task(name="check-study", cache_policy=NO_CACHE)
def check_study(plan, completed: dict[str, bool]) -> None:
    """Fail (naming them) if any run of the study failed."""
    from hbir.app import study

    study.check_completed(plan, completed)


def _log(line: str) -> None:
    from prefect import get_run_logger

    get_run_logger().info(line)
