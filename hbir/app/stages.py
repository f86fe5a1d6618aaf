"""The pipeline's stages as plain functions of a run: paths in, paths out, no Prefect.

    run_id, _ = records.start(config)                             # hbir/app/records.py: a 'running' row
    tables = ingest(config, run_id)                               # {dataset: folder of canonical tables}
    validate(config, run_id, tables)                              # contracts; a failure fails the run
    pairs = build_batches(config, run_id, tables)                 # training pairs (dev split held out), batch rules
    model_dir = train(config, run_id, pairs).model_dir            # the fine-tuned model's folder
    vectors = embed(config, run_id, model_dir, tables["xquad-r"]) # cached on (model, texts, prefixes, candidates)
    indexes = index(config, run_id, "xquad-r", tables["xquad-r"], vectors)
    evaluate(config, run_id, "xquad-r", tables["xquad-r"], vectors, indexes)
    report(config, run_id, model_dir)
    records.store_results(config, run_id)                         # every row of the run in one transaction

Each stage keeps the rows it produces under ``<output.dir>/<run_id>/rows/`` until ``store_results`` writes them all
at once; a stage that fails records the run as failed with its error (``records.records_failure``), so nothing
else of the run is written. Two compositions call these stages: ``hbir/app/pipeline.py`` (``hbir validate``,
``train`` and ``eval``, without Prefect) and the Prefect flows in ``flows/`` (``hbir run``, deployments).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from hbir.app.records import keep_rows, kept_rows, records_failure, source_fingerprint
from hbir.core.config import MERGE_GRID, Config, EvalConfig, ModelConfig
from hbir.core.errors import ContractError, HbirError
from hbir.core.files import build_once, file_sha256, replace_dir, write_file
from hbir.core.memory import gives_back_freed_memory
from hbir.core.names import POOL
from hbir.core.paths import embeddings_cache_dir, run_dir, tables_cache_dir
from hbir.core.torchrun import under_torchrun
from hbir.store import runs
from tasks.tables import TextColumn, TextList, load_tables, save_tables

Log = Callable[[str], None]


@records_failure
def ingest(config: Config, run_id: str, log: Log = print) -> dict[str, str]:
    """``ingest_tables`` as a stage of run ``run_id``."""
    return ingest_tables(config, log)


@gives_back_freed_memory
def ingest_tables(config: Config, log: Log = print) -> dict[str, str]:
    """Read every dataset of ``data.train`` and ``data.eval`` into canonical tables saved under
    ``$HBIR_CACHE_DIR/tables/<source fingerprint>``; returns {dataset: folder}. Unchanged files are not read again."""
    from tasks.ingest import ingest_to_folder

    folders = {}
    for name in dict.fromkeys(config.data.train + config.data.eval):
        fingerprint = source_fingerprint(config, name)
        folder = tables_cache_dir() / fingerprint
        if fingerprint.endswith("-uncached") or not (folder / "qrels.parquet").exists():
            log(f"ingesting {name} from {config.data.dir}")
            default_lang = config.data.default_lang.get(name)
            ingest_to_folder(config.data.dir, name, config.data.languages, folder, default_lang)
        folders[name] = str(folder)
    return folders


@records_failure
@gives_back_freed_memory
def validate(config: Config, run_id: str, tables: dict[str, str]) -> None:
    """Check the data contracts; keep their outcomes and the dataset versions as the run's rows. Raises
    ContractError (the run recorded as failed, with the outcomes) when a contract fails."""
    from data_contracts.validate import check_contracts
    from tasks.ingest import dataset_versions

    datasets = [load_tables(folder, texts=False) for folder in tables.values()]  # texts read a part at a time
    keep_contract_outcomes(config, run_id, "validations", check_contracts(config.data, datasets))
    versions = [dataset_versions(d) for d in datasets]
    keep_rows(config, run_id, dataset_versions=pd.concat(versions, ignore_index=True) if versions else pd.DataFrame())


def keep_contract_outcomes(config: Config, run_id: str, part: str, results: list) -> None:
    """Keep contract outcomes as the run's ``validations`` rows (``part``: their file); raise ContractError naming
    the failed ones."""
    from data_contracts.validate import contract_failure_message

    keep_rows(config, run_id, **{part: pd.DataFrame([asdict(result) for result in results])})
    failed = [result for result in results if not result.success]
    if failed:
        raise ContractError(contract_failure_message(failed))


@records_failure
def build_batches(config: Config, run_id: str, tables: dict[str, str]) -> str | None:
    """The training pairs of ``data.train`` without the dev split (``data.dev_fraction`` of the questions with their
    translations, checked to be disjoint from training and kept as tables under ``<run>/dev/<dataset>/``), checked
    against the batch rules (enough groups and distinct passages for ``train.batch_size``); returns the pairs'
    parquet file (None when ``train.steps`` is 0: nothing to train)."""
    from data_contracts.validate import check_split
    from tasks.batching import check_batch_rules, training_pairs
    from tasks.dev import dev_tables, split_pairs

    train_cfg = config.train
    if train_cfg.steps == 0:
        return None
    datasets = [load_tables(tables[name]) for name in config.data.train]
    pairs = pd.concat([training_pairs(d) for d in datasets], ignore_index=True)
    pairs, dev_qids = split_pairs(pairs, config.data.dev_fraction, config.data.split_seed)
    if config.data.dev_fraction:
        keep_contract_outcomes(config, run_id, "validations_split", check_split(datasets, pairs, dev_qids))
        for d in datasets:
            save_tables(dev_tables(d, dev_qids[d.name]), run_dir(config.output.dir, run_id) / "dev" / d.name)
    check_batch_rules(
        pairs, train_cfg.batch_size, train_cfg.mono_share, train_cfg.seed, train_cfg.mono_languages,
        train_cfg.cross_same_language,
    )  # fmt: skip
    path = run_dir(config.output.dir, run_id) / "pairs.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(path, index=False)
    return str(path)


@records_failure
@gives_back_freed_memory
def train(config: Config, run_id: str, pairs_path: str | None, log: Log = print):
    """Fine-tune ``model.source`` on the pairs (resuming from a checkpoint), measuring the dev split every
    ``train.eval_every`` steps; returns the ``TrainResult``, whose ``model_dir`` is that of ``model.source`` itself
    when ``train.steps`` is 0 (a zero-shot run)."""
    import pyarrow.parquet as pq

    from hbir.app.train_ranks import train_in_this_group, train_on_ranks
    from models.sources import resolve_model_source
    from tasks.training import TrainResult

    model_dir = resolve_model_source(config.model.source)
    if config.train.steps == 0:
        return TrainResult(model_dir, steps=0, resumed_from=0, seconds=0.0)
    db, timeout = config.db.path, config.db.lock_timeout_s
    n_pairs = pq.ParquetFile(pairs_path).metadata.num_rows  # read in full by the process(es) that train
    log(f"training {config.model.source} on {n_pairs} pairs from {', '.join(config.data.train)}")
    out_dir = run_dir(config.output.dir, run_id)
    if under_torchrun():  # hbir itself was started by torchrun: train on its group (hbir/app/train_ranks.py)
        result = train_in_this_group(config, run_id, pairs_path, log)
    elif config.train.world_size > 1:  # the same, on ranks of a torchrun started here
        result = train_on_ranks(config, run_id, pairs_path, log)
    else:
        result = fine_tune_run(config, run_id, pairs_path, log)
    merge_weight = None
    if config.train.merge is not None:
        dev_dirs = [out_dir / "dev" / name for name in config.data.train]
        merge_weight = merge_with_base(
            model_dir, result.model_dir, result.model_dir, config.train.merge, config.model, config.eval, dev_dirs, log
        )
    runs.record_model_choice(db, run_id, result.selected_step, merge_weight, timeout)
    keep_model(config, run_id, result.model_dir)
    describe_model(config, run_id, result.model_dir)
    return result


def fine_tune_run(config: Config, run_id: str, pairs_path: str, log: Log = print, ranks=None):
    """``fine_tune`` of run ``run_id`` as one process or as one of ``ranks`` (``tasks.distributed.Ranks``): rank 0
    with the run's step log and dev evaluation."""
    from models.sources import resolve_model_source
    from tasks.distributed import SINGLE
    from tasks.training import fine_tune

    ranks = ranks or SINGLE
    out_dir = run_dir(config.output.dir, run_id)
    step_log = runs.TrainStepsLog(config.db.path, run_id, config.db.lock_timeout_s) if ranks.is_main else None
    dev_eval = dev_evaluation(config, out_dir / "dev") if ranks.is_main else None
    model_dir, pairs = resolve_model_source(config.model.source), pd.read_parquet(pairs_path)
    return fine_tune(model_dir, pairs, config.train, config.model, out_dir, step_log, log, dev_eval, ranks)


def merge_with_base(
    base_dir: Path,
    tuned_dir: Path,
    out_dir: Path,
    weight: float | str,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    dev_dirs: list[Path],
    log: Log = print,
) -> float:
    """Write to ``out_dir`` (which may be ``tuned_dir``) the merge of the fine-tuned model with its base: at
    ``weight``, or for ``auto`` at the weight of ``MERGE_GRID`` with the best dev score on the dev tables in
    ``dev_dirs``. Returns the weight."""
    from models.encoder import BiEncoder
    from models.merge import base_state, merge_models
    from tasks.dev import choose_merge_weight

    if weight != "auto":
        merge_models(base_dir, tuned_dir, float(weight), out_dir, model_cfg)
        log(f"merged with {model_cfg.source}: weight {weight:g} on the fine-tuned model")
        return float(weight)
    missing = [str(folder) for folder in dev_dirs if not (folder / "meta.json").exists()]
    if missing or not dev_dirs:
        raise HbirError(f"merge weight auto is chosen on the dev split, and there is none ({', '.join(missing)}): "
                        "give a weight, e.g. 0.5")  # fmt: skip
    encoder = BiEncoder.from_config(tuned_dir, model_cfg)
    dev = {folder.name: load_tables(folder) for folder in dev_dirs}
    chosen, scores = choose_merge_weight(encoder, base_state(base_dir), dev, eval_cfg, MERGE_GRID)
    replace_dir(out_dir, encoder.save)
    by_weight = ", ".join(f"{w:g}: {score:.4f}" for w, score in scores.items())
    log(f"merge=auto: dev score by weight {by_weight}; merged with {model_cfg.source} at weight {chosen:g}")
    return chosen


def dev_evaluation(config: Config, dev_dir: Path):
    """The dev split's evaluation for ``fine_tune`` (None when ``train.eval_every`` is 0 or there is no dev split)."""
    from tasks.dev import evaluate_dev

    if not config.train.eval_every or not config.data.dev_fraction:
        return None
    dev = {name: load_tables(dev_dir / name) for name in config.data.train}
    return lambda encoder: evaluate_dev(encoder, dev, config.eval)


def describe_model(config: Config, run_id: str, model_dir: Path, metrics: pd.DataFrame | None = None) -> None:
    """Write the model card of the model run ``run_id`` made (``README.md`` in its folder), with the mono / cross /
    multi table of each evaluated dataset in ``metrics``."""
    from tasks.report.model_card import write_model_card
    from tasks.report.run import setting_summary

    info = runs.run_info(config.db.path, run_id, config.db.lock_timeout_s)
    of_dataset = {} if metrics is None else {name: setting_summary(rows) for name, rows in metrics.groupby("dataset")}
    write_model_card(Path(model_dir), info, json.loads(info["config"]), of_dataset)


def keep_model(config: Config, run_id: str, model_dir: Path) -> None:
    """Keep the run's model as its ``model`` artifact row."""
    artifact = {"kind": "model", "path": str(model_dir), "sha256": model_sha256(model_dir)}
    keep_rows(config, run_id, artifacts_model=pd.DataFrame([artifact]))


def model_sha256(model_dir: str | Path) -> str:
    """The SHA-256 a model directory is recorded with: that of its weights file."""
    return file_sha256(Path(model_dir) / "model.safetensors")


@records_failure
def model_to_evaluate(config: Config, run_id: str, model_run: str | None = None) -> str:
    """The model folder an eval run evaluates: that trained by run ``model_run``, else ``model.source``."""
    from models.sources import resolve_model_source

    db, timeout = config.db.path, config.db.lock_timeout_s
    return str(runs.trained_model(db, model_run, timeout) if model_run else resolve_model_source(config.model.source))


@records_failure
@gives_back_freed_memory
def merge(config: Config, run_id: str, parent_run: str, weight: float | str, log: Log = print) -> str:
    """Merge the model run ``parent_run`` trained with the base model it was trained from (its ``model.source``),
    at ``weight`` on the fine-tuned model (``auto``: chosen on that run's dev split); returns the merged model's
    folder, ``<output.dir>/<run_id>/model``, and records the weight."""
    from models.sources import resolve_model_source

    db, timeout = config.db.path, config.db.lock_timeout_s
    tuned_dir = runs.trained_model(db, parent_run, timeout)
    parent = json.loads(runs.run_info(db, parent_run, timeout)["config"])
    model_cfg = ModelConfig.model_validate(parent["model"])
    dev_dirs = [tuned_dir.parent / "dev" / name for name in parent["data"]["train"]]
    out_dir = run_dir(config.output.dir, run_id) / "model"
    base_dir = resolve_model_source(model_cfg.source)
    chosen = merge_with_base(base_dir, tuned_dir, out_dir, weight, model_cfg, config.eval, dev_dirs, log)
    runs.record_model_choice(db, run_id, None, chosen, timeout)
    keep_model(config, run_id, out_dir)
    describe_model(config, run_id, out_dir)
    return str(out_dir)


@records_failure
def embed(config: Config, run_id: str, model_dir: str, tables_dir: str, log: Log = print) -> str:
    """``embed_tables`` as a stage of run ``run_id``."""
    return embed_tables(config, model_dir, tables_dir, log)


@gives_back_freed_memory
def embed_tables(config: Config, model_dir: str, tables_dir: str, log: Log = print) -> str:
    """Embeddings of a dataset's queries and candidates (a folder: ``tasks.embedding.load_vectors``), read from the
    embedding cache when the model, texts, prefixes and candidate mode are unchanged; returns the folder. Its name
    says what its vectors depend on, so with the cache on a folder already there is used as it is (a run reading it
    is never pulled from under); with ``eval.cache_embeddings`` off it is embedded and written again."""
    from tasks.embedding import QUERIES, embed_dataset, load_text_encoder, model_fingerprint
    from tasks.training import pick_device

    tables = load_tables(tables_dir, texts=False)  # the candidates' texts are read a language at a time
    fingerprint = model_fingerprint(Path(model_dir))
    encoder = load_text_encoder(model_dir, config.model, pick_device(config.train.device), fingerprint, log)
    log(f"encoding with the {encoder.backend} backend (model.backend {config.model.backend})")
    eval_cfg = config.eval
    # on a Dask cluster the workers hand their vectors back through the cache: it is read whatever cache_embeddings
    cache_dir = embeddings_cache_dir() if eval_cfg.cache_embeddings or eval_cfg.task_runner == "dask" else None
    key = embed_key(fingerprint, tables_dir, config, encoder.encoding)

    def write(folder: Path) -> None:
        embed_dataset(
            encoder, fingerprint, tables, eval_cfg.candidates, eval_cfg.batch_size, cache_dir, log,
            eval_cfg.shard_size, into=folder,
        )  # fmt: skip

    folder = embeddings_cache_dir() / "datasets" / key
    if cache_dir is None:
        return str(replace_dir(folder, write))
    if (folder / QUERIES).exists():
        log(f"{tables.name}: its vectors by this model and settings are cached in {folder}")
    return str(build_once(folder, write, marker=QUERIES))


def embedding_jobs(config: Config, model_dir: str, tables_dir: str, log: Log = print) -> list:
    """The blocks and shards of a dataset's embedding that are not cached yet (``tasks.embedding.EmbeddingJob``),
    for the flows to run as tasks on a Dask cluster (``eval.task_runner=dask``); ``embed_tables`` then reads them
    from the cache. Loading the encoder here makes an ONNX backend's export once, before the workers start."""
    from tasks.embedding import embedding_jobs as missing_jobs
    from tasks.embedding import load_text_encoder, model_fingerprint
    from tasks.training import pick_device

    fingerprint = model_fingerprint(Path(model_dir))
    encoder = load_text_encoder(model_dir, config.model, pick_device(config.train.device), fingerprint, log)
    eval_cfg = config.eval
    return missing_jobs(
        encoder, fingerprint, load_tables(tables_dir, texts=False), eval_cfg.candidates, eval_cfg.batch_size,
        embeddings_cache_dir(), eval_cfg.shard_size,
    )  # fmt: skip


@gives_back_freed_memory  # a Dask worker encodes shard after shard
def run_embedding_job(config: Config, model_dir: str, job) -> str:
    """Encode one ``embedding_jobs`` job and write its cache file, with this process's copy of the encoder (loaded
    by its first job: a Dask worker loads its model once); returns the file."""
    from tasks.embedding import run_embedding_job as run_job

    model = config.model.model_copy(update={"backend": job.backend})  # auto resolved once, by the flow
    encoder = _worker_encoder(str(model_dir), model.model_dump_json(), config.train.device)
    run_job(encoder, job, config.eval.batch_size)
    return str(job.path)


@functools.lru_cache(maxsize=1)  # one model per worker process at a time
def _worker_encoder(model_dir: str, model_json: str, device: str):
    from tasks.embedding import load_text_encoder, model_fingerprint
    from tasks.training import pick_device

    model_cfg = ModelConfig.model_validate_json(model_json)
    return load_text_encoder(model_dir, model_cfg, pick_device(device), model_fingerprint(Path(model_dir)))


def dask_task_runner(eval_cfg: EvalConfig):
    """prefect-dask's task runner for ``eval.task_runner=dask``: the cluster at ``eval.dask_address``, else a
    LocalCluster of ``eval.dask_workers`` single-threaded worker processes."""
    from prefect_dask import DaskTaskRunner

    if eval_cfg.dask_address:
        return DaskTaskRunner(address=eval_cfg.dask_address)
    cluster = {"n_workers": eval_cfg.dask_workers, "threads_per_worker": 1, "processes": True}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster)


def embed_key(model_fp: str, tables_dir: str, config: Config, encoding: str) -> str:
    """What a dataset's embeddings depend on: the model, its tables (named by the source files' fingerprint), the
    model settings, the backend ``model.backend`` resolved to (``TextEncoder.encoding``), and the candidate mode:
    names the dataset's vectors file."""
    parts = [model_fp, tables_dir, config.model.model_dump(), encoding, config.eval.candidates]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@records_failure
@gives_back_freed_memory
def index(config: Config, run_id: str, dataset: str, tables_dir: str, vectors_path: str) -> list[str]:
    """Build and save the faiss indexes of a dataset (per language and pooled); returns their files. With
    ``eval.save_indexes`` off nothing is built here (the evaluate stage builds what it searches)."""
    from tasks.embedding import load_vectors
    from tasks.evaluation import indexes_one_at_a_time, order_corpus
    from tasks.indexing import save_index

    if not config.eval.save_indexes:
        return []
    tables, vectors = load_tables(tables_dir, texts=False), load_vectors(vectors_path)
    corpus = order_corpus(tables)
    folder = run_dir(config.output.dir, run_id) / "indexes" / dataset
    paths, artifacts = {}, []
    for lang, built in indexes_one_at_a_time(corpus.pool_vectors(vectors.candidates), corpus, config.eval):
        paths[lang] = folder / f"{index_file_stem(config.eval.index)}-{lang}.faiss"
        artifacts.append({"kind": "index", "path": str(paths[lang]), "sha256": save_index(built, paths[lang])})
        del built  # dropped before the next is built: one index in memory at a time
    for lang in corpus.langs:  # row i of an ids file: the index's id i
        ids = tables.candidates.iloc[corpus.order[corpus.block(lang)]][["cid", "lang", "doc_id"]]
        texts = tables.text_column("text", lang)  # the block's rows are in table order
        write_file(index_ids_path(paths[lang]), lambda tmp, ids=ids, texts=texts: write_ids(ids, texts, tmp))
    write_file(
        index_ids_path(paths[POOL]),
        lambda tmp: concat_parquet([index_ids_path(paths[lang]) for lang in corpus.langs], tmp),
    )
    keep_rows(config, run_id, **{f"artifacts_index_{dataset}": pd.DataFrame(artifacts)})
    return [row["path"] for row in artifacts]


def write_ids(ids: pd.DataFrame, texts: TextList | TextColumn, out: Path) -> None:
    """An index's ids file: the rows of ``ids`` with a ``text`` column of ``texts`` (a ``TextList`` or
    ``TextColumn``, one per row, in order), written a batch of texts at a time: a language's texts whole, as Python
    strings and then Arrow's, took 60k Hindi documents of 5,000 characters to 3.0 GB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = ids.iloc[:0].assign(text=pd.Series([], dtype=ids["cid"].dtype))  # a string column as the others
    schema = pa.Schema.from_pandas(empty, preserve_index=False)
    start = 0
    with pq.ParquetWriter(out, schema) as writer:
        for batch in texts.batches():
            rows = ids.iloc[start : start + len(batch)]
            columns = [pa.array(rows[name], type=schema.field(name).type) for name in rows.columns]
            text = pa.array(batch, type=schema.field("text").type)
            writer.write_table(pa.Table.from_arrays([*columns, text], schema=schema))
            start += len(batch)
    if start != len(ids):
        raise ValueError(f"{len(ids)} ids, {start} texts for {out}")


def concat_parquet(files: list[Path], out: Path) -> None:
    """Write the rows of ``files`` (one schema), in order, to ``out``, a row group at a time."""
    import pyarrow.parquet as pq

    with pq.ParquetWriter(out, pq.read_schema(files[0])) as writer:
        for file in files:
            parquet = pq.ParquetFile(file)
            for group in range(parquet.num_row_groups):
                writer.write_table(parquet.read_row_group(group))


def index_file_stem(index: str) -> str:
    """The part of an index file's name that says its kind: ``flat``, or a factory string made file-safe
    (``IVF4096,PQ48`` -> ``IVF4096_PQ48``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", index)


def index_ids_path(index_path: str | Path) -> Path:
    """The candidates of a saved index, row i for its id i: ``<index>.ids.parquet`` beside it."""
    return Path(index_path).with_suffix(".ids.parquet")


@records_failure
@gives_back_freed_memory
def evaluate(
    config: Config, run_id: str, dataset: str, tables_dir: str, vectors_path: str, index_paths: list[str]
) -> dict[str, float]:
    """All settings of one dataset; keeps the metrics, per-query values and language bias as the run's rows and
    returns the setting summaries ({'mono map': ..., ...})."""
    from tasks.embedding import load_vectors
    from tasks.evaluation import evaluate
    from tasks.indexing import load_index

    indexes = None  # evaluate builds them when needed and not saved
    if config.eval.index != "flat" and index_paths:  # approximate indexes are searched; flat is a matrix product
        indexes = {Path(p).stem.split("-", 1)[1]: load_index(p, config.eval.index_mmap) for p in index_paths}
        assert POOL in indexes
    result = evaluate(load_tables(tables_dir, texts=False), load_vectors(vectors_path), config.eval, indexes)
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
    from tasks.report.run import write_report

    db, timeout = config.db.path, config.db.lock_timeout_s
    rows = kept_rows(config, run_id)
    curve, dev_curve = runs.train_curve(db, run_id, timeout), runs.dev_curve(db, run_id, timeout)
    info = {**runs.run_info(db, run_id, timeout), "model_dir": model_dir}
    out_dir = run_dir(config.output.dir, run_id) / "report"
    files = write_report(out_dir, info, rows["metrics"], rows["language_bias"], curve, dev_curve)
    artifacts = pd.DataFrame([{"kind": f.kind, "path": str(f.path), "sha256": f.sha256} for f in files])
    keep_rows(config, run_id, artifacts_report=artifacts)
    if Path(model_dir).parent == run_dir(config.output.dir, run_id):  # the run's own model: its card gets the table
        describe_model(config, run_id, Path(model_dir), rows["metrics"])
    return str(files[0].path)
