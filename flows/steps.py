"""The pipeline's stages (``hbir/pipeline.py``) as Prefect tasks: thin wrappers that add caching, retries and names.

Ingestion is cached on the fingerprint of the source files, embeddings on the model's and the texts' fingerprints
(paths in, paths out: never a model object in a cache key). Only the stages that can fail for a passing reason (a
locked database, a busy file system) are retried; a failed contract is never retried.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from hbir import pipeline
from hbir.config import Config, load_config


def _ingest_key(context, parameters: dict[str, Any]) -> str:
    config: Config = parameters["config"]
    sources = [
        pipeline.source_fingerprint(config, name) for name in dict.fromkeys(config.data.train + config.data.eval)
    ]
    return "ingest-" + hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def _embed_key(context, parameters: dict[str, Any]) -> str:
    from tasks.embedding import model_fingerprint

    config: Config = parameters["config"]
    parts = [
        model_fingerprint(Path(parameters["model_dir"])),
        parameters["tables_dir"],  # named by the source files' fingerprint
        config.model.model_dump(),
        config.eval.candidates,
    ]
    return "embed-" + hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


@task(name="configure", cache_policy=NO_CACHE)
def configure(profile: str, config_path: str | None, overrides: dict[str, Any] | None) -> Config:
    return load_config(profile, config_path, overrides or {})


@task(name="start-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def start(config: Config, run_id: str | None, study_id: str | None = None) -> str:
    return pipeline.start(config, run_id, study_id=study_id)


@task(name="ingest", cache_key_fn=_ingest_key, persist_result=True)
def ingest(config: Config, run_id: str) -> dict[str, str]:
    return pipeline.ingest(config, run_id)


@task(name="validate", cache_policy=NO_CACHE)
def validate(config: Config, run_id: str, tables: dict[str, str]) -> None:
    pipeline.validate(config, run_id, tables)


@task(name="build-batches", cache_policy=NO_CACHE)
def build_batches(config: Config, run_id: str, tables: dict[str, str]) -> str | None:
    return pipeline.build_batches(config, run_id, tables)


@task(name="train", cache_policy=NO_CACHE)
def train(config: Config, run_id: str, pairs_path: str | None) -> str:
    return pipeline.train(config, run_id, pairs_path, progress=_logger_info)


@task(name="embed", cache_key_fn=_embed_key, persist_result=True)
def embed(config: Config, run_id: str, model_dir: str, tables_dir: str) -> str:
    """Cached on the model and texts, not the run: another run with the same model reuses the file."""
    return pipeline.embed(config, run_id, model_dir, tables_dir, progress=_logger_info)


@task(name="index", cache_policy=NO_CACHE)
def index(config: Config, run_id: str, dataset: str, tables_dir: str, vectors_path: str) -> list[str]:
    return pipeline.index(config, run_id, dataset, tables_dir, vectors_path)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    config: Config, run_id: str, dataset: str, tables_dir: str, vectors_path: str, index_paths: list[str]
) -> dict[str, float]:
    return pipeline.evaluate(config, run_id, dataset, tables_dir, vectors_path, index_paths)


@task(name="report", cache_policy=NO_CACHE)
def report(config: Config, run_id: str, model_dir: str) -> str:
    return pipeline.report(config, run_id, model_dir)


@task(name="store", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def store(config: Config, run_id: str) -> dict[str, int]:
    return pipeline.store_results(config, run_id)


@task(name="publish", cache_policy=NO_CACHE)
def publish(config: Config, run_id: str, report_path: str) -> None:
    """Prefect artifacts of the run: the setting summaries as a table, and the report with its plots inlined."""
    from prefect.artifacts import create_markdown_artifact

    from hbir.publish import artifact_key, report_markdown, summary_markdown

    key = artifact_key(run_id)
    create_markdown_artifact(
        markdown=summary_markdown(config, run_id), key=f"{key}-summary", description=f"hbir run {run_id}: summary"
    )
    create_markdown_artifact(
        markdown=report_markdown(Path(report_path)), key=f"{key}-report", description=f"hbir run {run_id}: report"
    )


@task(name="decide-retrain", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def decide_retrain(config: Config):
    from hbir import retrain

    decision = retrain.decide(config)
    _logger_info(("retraining: " if decision.retrain else "not retraining: ") + decision.reason)
    return decision


@task(name="record-skipped", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def record_skipped(config: Config, decision) -> str:
    from hbir import retrain

    return retrain.record_skipped(config, decision)


@task(name="promote", cache_policy=NO_CACHE)
def promote(config: Config, run_id: str):
    from hbir import retrain

    promotion = retrain.promote(config, run_id)
    _logger_info(f"run {run_id}: {promotion.note}")
    return promotion


@task(name="plan-study", cache_policy=NO_CACHE)
def plan_study(study_path: str | None, profile: str | None, overrides: dict[str, Any] | None):
    from hbir import study

    plan = study.plan(study_path, profile, overrides)
    done = len(plan.points) - len(plan.pending)
    _logger_info(f"study {plan.study_id}: {len(plan.points)} runs, {done} completed before, {len(plan.pending)} to run")
    return plan


@task(name="check-study", cache_policy=NO_CACHE)
def check_study(plan, completed: dict[str, bool]) -> None:
    """Fail (naming them) if any run of the study failed."""
    from hbir.errors import HbirError

    failed = [run_id for run_id, done in completed.items() if not done]
    if failed:
        raise HbirError(
            f"study {plan.study_id}: {len(failed)} of {len(completed)} runs failed ({', '.join(failed)}); their errors "
            "are in `hbir runs`. Start the study again to continue them."
        )


def _logger_info(line: str) -> None:
    from prefect import get_run_logger

    get_run_logger().info(line)
