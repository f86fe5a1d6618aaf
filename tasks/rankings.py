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

import faiss
import numpy as np
import pandas as pd

from hbir.core.files import write_file, write_text
from hbir.core.names import POOL
from tasks.embedding import DatasetEmbeddings
from tasks.evaluation import POOL_BLOCK, QUERY_ROWS, Corpus, exact_scores, order_corpus, relevant_pairs
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

    Scores are computed as the evaluation computes them (float64 products rounded to float32). Each corpus (a
    language's block of the pool, or the pool) is read once, a block of POOL_BLOCK candidates at a time (the pool may
    be a ``VectorFile``), scored against the queries ranked in it, QUERY_ROWS at a time, and merged into their running
    top ``depth`` (faiss's ``ResultHeap``): memory is the block, its scores and the lists, whatever the pool's size.
    """
    corpus = order_corpus(tables)
    pool = corpus.pool_vectors(vectors.candidates)
    cids = tables.candidates["cid"].to_numpy()[corpus.order]
    pairs = relevant_pairs(tables, corpus)
    qids = tables.queries["qid"].to_numpy()
    query_langs = [lang for lang in corpus.langs if (tables.queries["lang"] == lang).any()]
    asked = []  # (query_lang, corpus_lang, the query rows with a relevant candidate there, their qrels)
    for query_lang in query_langs:
        of_lang = pairs[pairs["query_lang"] == query_lang]
        others = [y for y in corpus.langs if y != query_lang]
        for corpus_lang in {"mono": [query_lang], "cross": others, "multi": [POOL]}[setting]:
            judged = of_lang if corpus_lang == POOL else of_lang[of_lang["corpus_lang"] == corpus_lang]
            asked.append((query_lang, corpus_lang, np.unique(judged["query_row"].to_numpy()), judged))
    ranked = []
    for corpus_lang in dict.fromkeys(corpus_lang for _, corpus_lang, _, _ in asked):  # each corpus read once
        here = [(x, rows) for x, y, rows, _ in asked if y == corpus_lang and len(rows)]
        if not here:
            continue
        rows = np.unique(np.concatenate([rows for _, rows in here]))
        found = top_candidates(vectors.queries[rows], pool, corpus, corpus_lang, depth)
        for query_lang, asked_rows in here:
            where = np.searchsorted(rows, asked_rows)
            suffix = _query_id_suffix(setting, query_lang, corpus_lang)
            ranked.append(_ranking_rows(found.D[where], found.I[where], cids, qids[asked_rows], suffix, query_lang,
                                        corpus_lang))  # fmt: skip
    judged = [
        pd.DataFrame(
            {"query_id": rows["qid"].astype(str) + _query_id_suffix(setting, x, y), "cid": rows["cid"], "relevance": 1}
        )
        for x, y, _, rows in asked
    ]
    columns = ["query_id", "qid", "query_lang", "corpus_lang", "cid", "rank", "score"]
    ranked_frame = pd.concat(ranked, ignore_index=True) if ranked else pd.DataFrame(columns=columns)
    judged_frame = (
        pd.concat(judged, ignore_index=True) if judged else pd.DataFrame(columns=["query_id", "cid", "relevance"])
    )
    return ranked_frame, judged_frame


def top_candidates(queries: np.ndarray, pool, corpus: Corpus, corpus_lang: str, depth: int) -> faiss.ResultHeap:
    """Each query's ``depth`` best candidates of ``corpus_lang``'s corpus ('all': the pool), best first: a finalised
    ``faiss.ResultHeap`` (``.D`` scores, ``.I`` pool positions), the corpus read once, a block at a time."""
    block = corpus.block(corpus_lang)
    found = faiss.ResultHeap(len(queries), min(depth, block.stop - block.start), keep_max=True)
    for start in range(block.start, block.stop, POOL_BLOCK):
        stop = min(start + POOL_BLOCK, block.stop)
        candidates = np.asarray(pool[start:stop], dtype=np.float64)  # converted once, not per query chunk
        for first in range(0, len(queries), QUERY_ROWS):
            rows = np.arange(first, min(first + QUERY_ROWS, len(queries)))
            found.add_result_subset(rows, exact_scores(queries[rows], candidates), np.arange(start, stop))
    found.finalize()
    return found


def _ranking_rows(
    scores: np.ndarray, positions: np.ndarray, cids: np.ndarray, qids: np.ndarray, suffix: str, query_lang: str,
    corpus_lang: str,
) -> pd.DataFrame:  # fmt: skip
    """Ranking rows from each query's best scores and pool positions (n, depth), best first."""
    depth = scores.shape[1]
    return pd.DataFrame(
        {
            "query_id": np.repeat(qids.astype(str), depth) + suffix,
            "qid": np.repeat(qids, depth),
            "query_lang": query_lang,
            "corpus_lang": corpus_lang,
            "cid": cids[positions].ravel(),
            "rank": np.tile(np.arange(1, depth + 1), len(qids)),
            "score": scores.ravel(),
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
