"""The ``embed-shards`` flow: a dataset's embedding blocks and shards that are not cached yet, each a Prefect task,
on the Dask cluster of ``eval.task_runner=dask`` (the runner is set by the caller, ``flows.steps.embed``). Each task
writes its block's or shard's cache file; the ``embed`` step then reads the dataset's vectors from the cache."""

from __future__ import annotations

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from hbir.app import stages
from hbir.core.config import Config


@task(name="plan-shards", cache_policy=NO_CACHE)
def plan_shards(config: Config, model_dir: str, tables_dir: str) -> list:
    return stages.embedding_jobs(config, model_dir, tables_dir, log=get_run_logger().info)


@task(name="embed-shard", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def embed_shard(config: Config, model_dir: str, job) -> str:
    """A worker that died mid-shard leaves no file (written then renamed): the retry embeds the shard again."""
    return stages.run_embedding_job(config, model_dir, job)


@flow(name="embed-shards")
def embed_shards(config: Config, model_dir: str, tables_dir: str) -> list[str]:
    jobs = plan_shards(config, model_dir, tables_dir)  # here, in the flow's process; a worker reads its shard's texts
    futures = embed_shard.map(unmapped(config), unmapped(model_dir), jobs)
    return [future.result() for future in futures]
