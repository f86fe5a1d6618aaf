"""A run's model ranking candidates outside an evaluation: its rankings exported for other IR tools (``hbir export``)
and a typed question searched (``hbir search``).

    files = export_rankings(config, "my-run", "xquad-r", "mono", depth=1000, fmt="trec")
    hits = search(config, "my-run", "Where is Paris?", k=10, lang=None, dataset="xquad-r")

The model is the run's own (a training or merge run), its parent's (an eval of a trained run) or its
``model.source`` (zero-shot); texts and vectors come from hbir's caches (ingested tables, embeddings), so nothing is
encoded twice. Search reads the run's saved index of the dataset and the candidate ids beside it when there is one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hbir.app import stages
from hbir.core.config import Config, EvalConfig, ModelConfig
from hbir.core.errors import HbirError
from hbir.core.names import POOL
from hbir.core.paths import run_dir
from hbir.store import runs


@dataclass(frozen=True)
class RunModel:
    run_id: str
    model_dir: Path
    model: ModelConfig  # the prefixes and length the run encoded with
    candidates: str  # eval.candidates: sentence | paragraph
    datasets: list[str]  # the run's evaluation datasets
    languages: list[str]  # data.languages of the run: which files it read


def run_model(config: Config, run_id: str) -> RunModel:
    """The model run ``run_id`` made or used, with the settings it encoded with; HbirError naming what is missing."""
    from models.sources import resolve_model_source

    db, timeout = config.db.path, config.db.lock_timeout_s
    info = runs.run_info(db, run_id, timeout)
    recorded = json.loads(info["config"])
    if info["kind"] in ("train", "train-eval", "merge") and info["strategy"] != "zero-shot":
        model_dir = runs.trained_model(db, run_id, timeout)
    elif info.get("parent_run_id"):
        model_dir = runs.trained_model(db, info["parent_run_id"], timeout)
    else:
        model_dir = Path(resolve_model_source(recorded["model"]["source"]))
    return RunModel(
        run_id,
        Path(model_dir),
        ModelConfig.model_validate(recorded["model"]),
        recorded.get("eval", {}).get("candidates", "sentence"),
        list(recorded.get("data", {}).get("eval", [])),
        list(recorded.get("data", {}).get("languages", config.data.languages)),
    )


def _encoding_config(config: Config, model: RunModel, dataset: str) -> Config:
    """``config`` with the run's encoding settings and languages, and only ``dataset`` to ingest."""
    data = config.data.model_copy(update={"train": [], "eval": [dataset], "languages": model.languages})
    eval_cfg = config.eval.model_copy(update={"candidates": model.candidates})
    return config.model_copy(update={"data": data, "model": model.model, "eval": eval_cfg})


def _dataset_of(model: RunModel, dataset: str | None) -> str:
    if dataset:
        return dataset
    if not model.datasets:
        raise HbirError(f"run {model.run_id!r} evaluated no dataset: give one with --dataset")
    return model.datasets[0]


def export_rankings(
    config: Config,
    run_id: str,
    dataset: str | None,
    setting: str,
    depth: int,
    fmt: str,
    out_dir: Path | None = None,
    log=print,
) -> list[Path]:
    """Write run ``run_id``'s rankings of ``setting`` on ``dataset`` to ``depth`` with their qrels (``tasks.rankings``)
    under ``out_dir`` (default ``<output.dir>/<run_id>/export``); returns the files."""
    from tasks.embedding import load_vectors
    from tasks.rankings import setting_rankings, write_rankings
    from tasks.tables import load_tables

    model = run_model(config, run_id)
    dataset = _dataset_of(model, dataset)
    encoding = _encoding_config(config, model, dataset)
    tables_dir = stages.ingest_tables(encoding, log)[dataset]
    vectors = load_vectors(stages.embed_tables(encoding, str(model.model_dir), tables_dir, log))
    ranked, qrels = setting_rankings(load_tables(tables_dir, texts=False), vectors, setting, depth)
    out_dir = Path(out_dir) if out_dir else run_dir(config.output.dir, run_id) / "export"
    return write_rankings(ranked, qrels, out_dir / f"{dataset}-{setting}", fmt, tag=run_id)


def search(
    config: Config, run_id: str, question: str, k: int, lang: str | None, dataset: str | None, log=print
) -> pd.DataFrame:
    """The ``k`` candidates of ``dataset`` (in language ``lang``, else the pool of all) that run ``run_id``'s model
    ranks first for ``question``: rank, score, lang, cid, text."""
    from tasks.embedding import load_text_encoder, model_fingerprint
    from tasks.indexing import search as search_index
    from tasks.training import pick_device

    model = run_model(config, run_id)
    dataset = _dataset_of(model, dataset)
    index, ids = _saved_index(config, run_id, dataset, lang) or _built_index(config, model, dataset, lang, log)
    # the question is encoded as the candidates were: the same model.backend, resolved for the same device
    device = pick_device(config.train.device)
    encoder = load_text_encoder(model.model_dir, model.model, device, model_fingerprint(Path(model.model_dir)), log)
    scores, found = search_index(index, encoder.embed([question], "query").numpy(), k)
    hits = ids.iloc[found[0][found[0] >= 0]].reset_index(drop=True)
    return hits.assign(rank=range(1, len(hits) + 1), score=scores[0][: len(hits)])[
        ["rank", "score", "lang", "cid", "text"]
    ]


def _saved_index(config: Config, run_id: str, dataset: str, lang: str | None):
    from tasks.indexing import load_index

    folder = run_dir(config.output.dir, run_id) / "indexes" / dataset
    found = sorted(folder.glob(f"*-{lang or POOL}.faiss")) if folder.is_dir() else []
    if not found or not stages.index_ids_path(found[0]).exists():
        return None
    return load_index(found[0]), pd.read_parquet(stages.index_ids_path(found[0]))


def _built_index(config: Config, model: RunModel, dataset: str, lang: str | None, log):
    """No saved index (a training run, or one saved by an older hbir): an exact one over the cached vectors."""
    from tasks.embedding import load_vectors
    from tasks.indexing import build_index
    from tasks.tables import load_tables

    encoding = _encoding_config(config, model, dataset)
    tables_dir = stages.ingest_tables(encoding, log)[dataset]
    vectors = load_vectors(stages.embed_tables(encoding, str(model.model_dir), tables_dir, log))
    candidates = load_tables(tables_dir).candidates.reset_index(drop=True)
    keep = candidates.index if lang is None else candidates.index[candidates["lang"] == lang]
    if not len(keep):
        raise HbirError(
            f"{dataset} has no candidates in language {lang!r}: languages {sorted(set(candidates['lang']))}"
        )
    index = build_index(vectors.candidates[keep], EvalConfig(index="flat"))
    return index, candidates.loc[keep, ["cid", "lang", "doc_id", "text"]].reset_index(drop=True)
