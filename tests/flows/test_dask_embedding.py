"""Embedding on a Dask cluster (``eval.task_runner=dask``): `hbir run` with a LocalCluster of 2 workers gives the
vectors of the in-process path and the same metrics, and a run whose shard files were partly lost embeds only
those shards again."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from tasks.embedding import load_vectors
from tests.flows.test_train_eval import hbir_run, rows

pytest.importorskip("prefect_dask")

SHARDED = ("--set", "train.steps=0", "--set", "eval.shard_size=300", "--set", "eval.batch_size=64")
ON_DASK = ("--set", "eval.task_runner=dask", "--set", "eval.dask_workers=2")


def dataset_vectors(cache) -> dict[str, np.ndarray]:
    (folder,) = (cache / "embeddings" / "datasets").iterdir()
    vectors = load_vectors(folder)
    return {"queries": vectors.queries, "candidates": np.asarray(vectors.candidates)}


def backend_files(cache) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (cache / "models" / "backend").iterdir()}


def test_dask_gives_the_in_process_vectors_and_reembeds_only_missing_shards(three_language_data, tmp_path):
    local_cache, dask_cache = tmp_path / "local-cache", tmp_path / "dask-cache"
    db = tmp_path / "local.duckdb"
    _, stderr, code = hbir_run(three_language_data, db, tmp_path / "runs", *SHARDED, cache=local_cache)
    assert code == 0, stderr[-3000:]
    # model.backend auto as timed on this CPU by the first run (timed apart, a close race could go the other way)
    shutil.copytree(local_cache / "models" / "backend", dask_cache / "models" / "backend")
    timed = backend_files(dask_cache)  # the timing and, since it is timed with it, the model's int8 agreement
    dask_db = tmp_path / "dask.duckdb"
    _, stderr, code = hbir_run(three_language_data, dask_db, tmp_path / "runs", *SHARDED, *ON_DASK, cache=dask_cache)
    assert code == 0, stderr[-3000:]
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in stderr
    assert "Beginning subflow run" in stderr and "embed-shards" in stderr
    # the workers (one thread each) encode with the backend auto was resolved to here, not timing their own
    assert backend_files(dask_cache) == timed
    shards = sorted((dask_cache / "embeddings").glob("*of*.npy"))
    assert len(shards) >= 6  # 3 languages x (questions, sentences), 1,190 of each, in shards of 320
    (done,) = re.findall(r"embedded (\d+) blocks and shards on Dask", stderr)
    assert int(done) == len(shards)
    local, on_dask = dataset_vectors(local_cache), dataset_vectors(dask_cache)
    for name in ("queries", "candidates"):
        np.testing.assert_array_equal(on_dask[name], local[name])
    metrics = "SELECT setting, metric, query_lang, corpus_lang, value FROM metrics ORDER BY ALL"
    assert rows(dask_db, metrics) == rows(db, metrics)

    lost = shards[:2]
    for path in lost:
        path.unlink()
    (dask_cache / "embeddings" / "datasets").rename(tmp_path / "vectors-moved")
    _, stderr, code = hbir_run(three_language_data, dask_db, tmp_path / "runs", *SHARDED, *ON_DASK, cache=dask_cache)
    assert code == 0, stderr[-3000:]
    assert re.findall(r"embedded (\d+) blocks and shards on Dask", stderr) == ["2"]
    assert all(path.exists() for path in lost)
    again = dataset_vectors(dask_cache)
    for name in ("queries", "candidates"):
        np.testing.assert_array_equal(again[name], local[name])
