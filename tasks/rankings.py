"""A setting's rankings to a depth, and their qrels, in the formats other IR tools read (``hbir export``).

    ranked, qrels = setting_rankings(tables, vectors, "mono", depth=1000)
    write_rankings(ranked, qrels, out_dir / "xquad-r-mono", "trec", tag="my-run")

Query ids are ``<qid>-<X>`` (mono: X -> X, multi: X -> the pool), and ``<qid>-<X>-<Y>`` for cross (the same question
is ranked against each other language's corpus); candidate ids are the dataset's. As in hbir's evaluation, a query
is in a corpus when it has a relevant candidate there, so trec_eval, ir_measures or ranx averaged per language pair
give hbir's ``metrics`` (mAP exactly when the depth covers the corpus and scores are not tied: hbir ranks ties
pessimistically, trec_eval by document id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from hbir.core.files import write_file, write_text
from hbir.core.names import POOL
from tasks.embedding import DatasetEmbeddings
from tasks.evaluation import exact_scores, order_corpus, query_chunk, relevant_pairs
from tasks.tables import DatasetTables

Setting = Literal["mono", "cross", "multi"]
Format = Literal["trec", "ranx", "parquet"]


def _query_id_suffix(setting: Setting, query_lang: str, corpus_lang: str) -> str:
    """What follows the question id in a query id: ``-<X>``, or ``-<X>-<Y>`` for cross (module doc)."""
    return f"-{query_lang}" + (f"-{corpus_lang}" if setting == "cross" else "")


def setting_rankings(
    tables: DatasetTables, vectors: DatasetEmbeddings, setting: Setting, depth: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``depth`` best candidates of every query of ``setting``, and the qrels of those queries:
    (query_id, qid, query_lang, corpus_lang, cid, rank, score) and (query_id, cid, relevance).

    Scores are computed as the evaluation computes them (each query language's queries in chunks of
    ``query_chunk`` against the whole pool, a corpus being its block of columns), so they are the very numbers its
    ranks come from.
    """
    corpus = order_corpus(tables)
    pool = corpus.pool_vectors(vectors.candidates)
    rows_at_once = query_chunk(len(pool))
    cids = tables.candidates["cid"].to_numpy()[corpus.order]
    pairs = relevant_pairs(tables, corpus)
    query_langs = tables.queries["lang"].to_numpy()
    qids = tables.queries["qid"].to_numpy()
    ranked, judged = [], []
    for query_lang in [lang for lang in corpus.langs if (query_langs == lang).any()]:
        query_rows = np.flatnonzero(query_langs == query_lang)
        of_lang = pairs[pairs["query_lang"] == query_lang]
        corpora = {"mono": [query_lang], "cross": [y for y in corpus.langs if y != query_lang], "multi": [POOL]}[
            setting
        ]
        relevant = {y: of_lang if y == POOL else of_lang[of_lang["corpus_lang"] == y] for y in corpora}
        with_relevant = {y: np.isin(query_rows, rows["query_row"].to_numpy()) for y, rows in relevant.items()}
        query_vectors = vectors.queries[query_rows]
        for start in range(0, len(query_rows), rows_at_once):
            chunk = slice(start, start + rows_at_once)
            scores = exact_scores(query_vectors[chunk], pool)  # (n, N) float32, as tasks.evaluation.exact_ranks
            for corpus_lang in corpora:
                keep = with_relevant[corpus_lang][chunk]
                if not keep.any():
                    continue
                block = corpus.block(corpus_lang)
                rows = query_rows[chunk][keep]
                suffix = _query_id_suffix(setting, query_lang, corpus_lang)
                ranked.append(
                    _top(scores[keep][:, block], cids[block], qids[rows], suffix, depth, query_lang, corpus_lang)
                )
        for corpus_lang, rows in relevant.items():
            suffix = _query_id_suffix(setting, query_lang, corpus_lang)
            judged.append(
                pd.DataFrame({"query_id": rows["qid"].astype(str) + suffix, "cid": rows["cid"], "relevance": 1})
            )
    columns = ["query_id", "qid", "query_lang", "corpus_lang", "cid", "rank", "score"]
    ranked_frame = pd.concat(ranked, ignore_index=True) if ranked else pd.DataFrame(columns=columns)
    judged_frame = (
        pd.concat(judged, ignore_index=True) if judged else pd.DataFrame(columns=["query_id", "cid", "relevance"])
    )
    return ranked_frame, judged_frame


def _top(
    scores: np.ndarray, cids: np.ndarray, qids: np.ndarray, suffix: str, depth: int, query_lang: str, corpus_lang: str
) -> pd.DataFrame:
    """The ``depth`` best columns of each row of ``scores``, best first, as ranking rows."""
    depth = min(depth, scores.shape[1])
    best = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1)
    return pd.DataFrame(
        {
            "query_id": np.repeat(qids.astype(str), depth) + suffix,
            "qid": np.repeat(qids, depth),
            "query_lang": query_lang,
            "corpus_lang": corpus_lang,
            "cid": cids[best].ravel(),
            "rank": np.tile(np.arange(1, depth + 1), len(qids)),
            "score": np.take_along_axis(scores, best, axis=1).ravel(),
        }
    )


def write_rankings(ranked: pd.DataFrame, qrels: pd.DataFrame, stem: Path, fmt: Format, tag: str) -> list[Path]:
    """Write the run and its qrels as ``<stem>.run.trec`` / ``<stem>.qrels.trec`` (trec), ``.run.json`` /
    ``.qrels.json`` (ranx: {query: {doc: score}}) or ``.run.parquet`` / ``.qrels.parquet``; returns the files."""
    stem = Path(stem)
    if fmt == "parquet":
        files = [stem.with_name(f"{stem.name}.run.parquet"), stem.with_name(f"{stem.name}.qrels.parquet")]
        for frame, path in zip((ranked, qrels), files, strict=True):
            write_file(path, lambda tmp, frame=frame: frame.to_parquet(tmp, index=False))
        return files
    scores = [_score_text(score) for score in ranked["score"].to_numpy()]
    if fmt == "trec":
        run = "".join(
            f"{query} Q0 {cid} {rank} {score} {tag}\n"
            for query, cid, rank, score in zip(ranked["query_id"], ranked["cid"], ranked["rank"], scores, strict=True)
        )
        judged = "".join(f"{query} 0 {cid} {rel}\n" for query, cid, rel in qrels.itertuples(index=False))
        files = [stem.with_name(f"{stem.name}.run.trec"), stem.with_name(f"{stem.name}.qrels.trec")]
        return [write_text(files[0], run), write_text(files[1], judged)]
    run_dict: dict[str, dict[str, float]] = {}
    for query, cid, score in zip(ranked["query_id"], ranked["cid"], ranked["score"], strict=True):
        run_dict.setdefault(query, {})[cid] = float(score)
    qrels_dict: dict[str, dict[str, int]] = {}
    for query, cid, rel in qrels.itertuples(index=False):
        qrels_dict.setdefault(query, {})[cid] = int(rel)
    files = [stem.with_name(f"{stem.name}.run.json"), stem.with_name(f"{stem.name}.qrels.json")]
    return [write_text(files[0], json.dumps(run_dict)), write_text(files[1], json.dumps(qrels_dict))]


def _score_text(score: np.float32) -> str:
    """The shortest decimal that reads back as the same float32: no two different scores become one in a file."""
    return np.format_float_positional(np.float32(score), unique=True, trim="-")
