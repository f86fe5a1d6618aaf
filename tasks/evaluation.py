"""LAReQA-style evaluation: the rank of every relevant candidate, metrics per setting and language pair, language bias.

    result = evaluate(tables, vectors, eval_cfg)   # DatasetTables, DatasetEmbeddings, the eval config section
    result.metrics        # dataset, setting, query_lang, corpus_lang, metric, value, n_queries
    result.per_query      # dataset, setting, query_lang, corpus_lang, qid, metric, value
    result.language_bias  # dataset, query_lang, rank_distance, same_lang_first_rate, n_queries

Settings (README, "Evaluation"): ``mono`` X -> X, ``cross`` X -> Y with X != Y, ``multi`` X -> the pool of all languages
(``corpus_lang`` 'all'). A query counts in a setting when it has a relevant candidate in that corpus.

With the exact (``flat``) index every query is scored against every candidate, so each relevant candidate's rank over
the whole corpus is known and mAP is exact. Ranks are 1-based and ties are pessimistic: a relevant candidate's rank
is the number of candidates scoring at least as high, and average precision takes a tie group at once, as sklearn's
``average_precision_score`` (LAReQA's mAP) does. A score is the dot product of the float32 vectors computed in
float64 and rounded to float32, so that identical vectors (repeated texts) tie wherever they sit: float32 matrix
products sum in an order that depends on a row's position and break such ties by an ulp. The pool is read once, a
block at a time (``exact_pair_ranks``), so it may be a ``VectorFile`` larger than memory; a relevant candidate's own
score is computed apart (its rank counts those at least that score, itself always included). With an approximate
index
(``ivf``, ``hnsw``) the ranks come from a faiss search to ``eval.depth``; relevant candidates below it count as not
retrieved.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import faiss
import numpy as np
import pandas as pd

from hbir.core.config import EvalConfig
from hbir.core.names import POOL
from tasks.embedding import DatasetEmbeddings
from tasks.indexing import build_index, search
from tasks.tables import DatasetTables, positions_in
from tasks.vector_file import VectorFile

POOL_BLOCK = 16384  # pool rows read and converted to float64 at once (384-d: 48 MiB)
QUERY_ROWS = 256  # query rows scored at once against a block: 32 MiB of float64 products, 16 MiB once rounded


@dataclass
class EvalResult:
    metrics: pd.DataFrame
    per_query: pd.DataFrame
    language_bias: pd.DataFrame


@dataclass(frozen=True)
class Corpus:
    """Candidates ordered by language, so that each language is one contiguous block of the pool."""

    order: np.ndarray  # pool position -> candidate row of the tables
    langs: list[str]
    starts: dict[str, int]  # language -> first pool position
    stops: dict[str, int]

    def block(self, lang: str) -> slice:
        return slice(self.starts[lang], self.stops[lang]) if lang != POOL else slice(0, len(self.order))

    @property
    def in_table_order(self) -> bool:
        """Whether the tables already list the candidates language by language (LAReQA, ``hbir distractors``
        pools), so that pool position and table row are one."""
        return bool((self.order == np.arange(len(self.order))).all())

    def pool_vectors(self, candidates):
        """The candidates' vectors (table row order; an array or a ``VectorFile``) in pool order: ``candidates``
        itself when the tables list them language by language, else a reordered copy: in memory for an array, in a
        file of its own for a ``VectorFile`` (``VectorFile.reordered``: a 384-d model's at 1M candidates are 1.5 GB,
        never whole in memory)."""
        if self.in_table_order:
            return candidates
        if isinstance(candidates, VectorFile):
            return candidates.reordered(self.order)
        return np.ascontiguousarray(candidates[self.order])


def evaluate(
    tables: DatasetTables, vectors: DatasetEmbeddings, eval_cfg: EvalConfig, indexes: dict | None = None
) -> EvalResult:
    """All mono, cross and multi settings of one dataset. ``indexes``: approximate faiss indexes by corpus language
    (``'all'`` for the pool), built here when missing; unused for the exact ``flat`` setting."""
    corpus = order_corpus(tables)
    pool_vectors = corpus.pool_vectors(vectors.candidates)
    if eval_cfg.index != "flat" and indexes is None:
        indexes = build_indexes(pool_vectors, corpus, eval_cfg)
    relevant = relevant_pairs(tables, corpus)
    if eval_cfg.index == "flat":
        exact = exact_pair_ranks(vectors.queries, pool_vectors, corpus, relevant)
    query_langs = tables.queries["lang"].to_numpy()
    metric_rows, per_query_blocks, bias_rows = [], [], []
    for query_lang in [lang for lang in corpus.langs if (query_langs == lang).any()]:
        query_rows = np.flatnonzero(query_langs == query_lang)
        targets = relevant_by_corpus(relevant[relevant["query_lang"] == query_lang], query_rows, corpus)
        query_vectors = vectors.queries[query_rows]
        if eval_cfg.index == "flat":
            ranked = {corpus_lang: exact.ranks_of(target.pair, corpus_lang) for corpus_lang, target in targets.items()}
        else:
            ranked = {
                corpus_lang: searched_ranks(search(indexes[corpus_lang], query_vectors[keep], eval_cfg.depth)[1], rel)
                for corpus_lang, (rel, keep, _) in targets.items()
            }
        qids = tables.queries["qid"].to_numpy()[query_rows]
        for corpus_lang, (ranks, rel_ge) in ranked.items():
            rel, keep, _ = targets[corpus_lang]
            setting = "multi" if corpus_lang == POOL else "mono" if corpus_lang == query_lang else "cross"
            key = {"dataset": tables.name, "setting": setting, "query_lang": query_lang, "corpus_lang": corpus_lang}
            values = metrics_from_ranks(ranks, rel_ge, (rel >= 0).sum(axis=1))
            n_queries = len(rel)
            metric_rows += [
                {**key, "metric": name, "value": float(v.mean()), "n_queries": n_queries} for name, v in values.items()
            ]
            per_query_blocks.append((key, qids[keep], values))
            if setting == "multi":
                bias, distances, ranked_twice = language_bias(ranks, rel, corpus, query_lang)
                bias_rows.append({"dataset": tables.name, "query_lang": query_lang, **bias})
                per_query_blocks.append((key, qids[keep][ranked_twice], {"rank_distance": distances}))
    return EvalResult(pd.DataFrame(metric_rows), per_query_frame(per_query_blocks), pd.DataFrame(bias_rows))


def order_corpus(tables: DatasetTables) -> Corpus:
    codes, names = pd.factorize(tables.candidates["lang"], sort=True)  # codes, not a Python string per candidate
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))])
    starts = {str(lang): int(bounds[i]) for i, lang in enumerate(names)}
    stops = {str(lang): int(bounds[i + 1]) for i, lang in enumerate(names)}
    return Corpus(order, [str(lang) for lang in names], starts, stops)


def relevant_pairs(tables: DatasetTables, corpus: Corpus) -> pd.DataFrame:
    """One row per (query row, relevant candidate): the query's row and language, the candidate's pool position
    and language."""
    pool_position = np.empty(len(corpus.order), dtype=np.int64)  # candidate row -> pool position
    pool_position[corpus.order] = np.arange(len(corpus.order))
    queries = tables.queries[["qid", "lang"]].rename(columns={"lang": "query_lang"}).reset_index(drop=True)
    queries["query_row"] = np.arange(len(queries))
    pairs = queries.merge(tables.qrels[["qid", "cid"]], on="qid")
    rows = positions_in(pairs["cid"], tables.candidates["cid"])
    if (rows < 0).any():  # the contracts refuse such qrels before any evaluation
        raise ValueError(f"{tables.name}: a qrel names no candidate, e.g. {pairs['cid'][rows < 0].iloc[0]!r}")
    pairs["pool_position"] = pool_position[rows]
    pairs["corpus_lang"] = tables.candidates["lang"].to_numpy()[rows]
    return pairs.reset_index(drop=True)  # its labels are its row numbers (``Relevant.pair``, ``ExactRanks``)


def relevant_by_corpus(pairs: pd.DataFrame, query_rows: np.ndarray, corpus: Corpus) -> dict[str, Relevant]:
    """For each corpus language and the pool, the relevant candidates of ``query_rows`` there (``Relevant``)."""
    blocks = dict(tuple(pairs.groupby("corpus_lang", sort=False)))
    targets = {lang: padded(blocks[lang], query_rows, corpus.starts[lang]) for lang in corpus.langs if lang in blocks}
    if len(pairs):
        targets[POOL] = padded(pairs, query_rows, 0)
    return targets


class Relevant(NamedTuple):
    """The relevant candidates of the queries that have one in a corpus (a language's block, or the pool)."""

    rel: np.ndarray  # (n, R) columns of the corpus block, -1: padding
    keep: np.ndarray  # which of the query rows asked about are these n (a mask)
    pair: np.ndarray  # (n, R) rows of ``relevant_pairs``' table, -1: padding


def padded(pairs: pd.DataFrame, query_rows: np.ndarray, block_start: int) -> Relevant:
    row = np.searchsorted(query_rows, pairs["query_row"].to_numpy())
    slot = pairs.groupby("query_row").cumcount().to_numpy()
    rel = np.full((len(query_rows), int(slot.max()) + 1), -1, dtype=np.int64)
    rel[row, slot] = pairs["pool_position"].to_numpy() - block_start
    pair = np.full(rel.shape, -1, dtype=np.int64)
    pair[row, slot] = pairs.index.to_numpy()  # the labels of relevant_pairs' table: its row numbers
    keep = (rel >= 0).any(axis=1)
    return Relevant(rel[keep], keep, pair[keep])


@dataclass(frozen=True)
class ExactRanks:
    """Per row of ``relevant_pairs``' table: the pair's score, and the number of candidates scoring at least as high
    in the candidate's language (``lang_rank``) and in the pool (``pool_rank``): its ranks there, ties pessimistic."""

    score: np.ndarray  # float32
    lang_rank: np.ndarray
    pool_rank: np.ndarray

    def ranks_of(self, pair: np.ndarray, corpus_lang: str) -> tuple[np.ndarray, np.ndarray]:
        """Ranks (n, R) of the pairs ``pair`` (-1: padding, rank inf) in ``corpus_lang``'s corpus (``'all'``: the
        pool), and for each the number of its row's pairs scoring at least as high (AP's numerator; padding 0)."""
        padding = pair < 0
        ranks = self.pool_rank if corpus_lang == POOL else self.lang_rank
        thresholds = np.where(padding, -np.inf, self.score[pair])
        rel_ge = (thresholds[:, None, :] >= thresholds[:, :, None]).sum(axis=2).astype(np.float64)
        rel_ge[padding] = 0.0
        return np.where(padding, np.inf, ranks[pair]), rel_ge


def exact_pair_ranks(queries: np.ndarray, pool, corpus: Corpus, pairs: pd.DataFrame) -> ExactRanks:
    """The exact ranks of every relevant pair (row of ``pairs``) in its language and in the pool, in one pass.

    The pool (an array or a ``VectorFile``, in pool order) is read POOL_BLOCK candidates of one language at a time,
    and each block is scored against every query that has a relevant candidate, QUERY_ROWS of them at once; each
    pair's counts of candidates scoring at least its score grow block by block (``counts_at_least``). Memory is one
    block and its scores, whatever the pool's size, and the pool is read once.
    """
    if not len(pairs):
        return ExactRanks(np.empty(0, np.float32), np.empty(0, np.int64), np.empty(0, np.int64))
    asking = np.unique(pairs["query_row"].to_numpy())
    slots = padded(pairs, asking, 0).pair  # (n_asking, R); each query asking has a pair, so no row is dropped
    score = pair_scores(queries, pool, pairs, asking, slots)
    thresholds = np.where(slots >= 0, score[slots], np.inf)  # inf: a padding slot counts nothing
    codes = {lang: code for code, lang in enumerate(corpus.langs)}
    pair_lang = pairs["corpus_lang"].map(codes).to_numpy()
    asker, positions = np.searchsorted(asking, pairs["query_row"].to_numpy()), pairs["pool_position"].to_numpy()
    lang_rank, pool_rank = np.zeros(len(pairs), dtype=np.int64), np.zeros(len(pairs), dtype=np.int64)
    for lang in corpus.langs:
        block = corpus.block(lang)
        for start in range(block.start, block.stop, POOL_BLOCK):
            stop = min(start + POOL_BLOCK, block.stop)
            candidates = np.asarray(pool[start:stop], dtype=np.float64)
            inside = np.flatnonzero((positions >= start) & (positions < stop))  # pairs whose candidate is here
            for first in range(0, len(asking), QUERY_ROWS):
                rows = slice(first, first + QUERY_ROWS)
                scores = exact_scores(queries[asking[rows]], candidates)
                filled = slots[rows] >= 0
                ids, counts = slots[rows][filled], counts_at_least(scores, thresholds[rows])[filled]
                pool_rank[ids] += counts
                lang_rank[ids] += np.where(pair_lang[ids] == codes[lang], counts, 0)
                # a relevant candidate counts itself even when it scores an ulp below its own score here (a
                # product of another shape can round apart): a rank is never below 1
                mine = inside[(asker[inside] >= first) & (asker[inside] < first + QUERY_ROWS)]
                missed = mine[scores[asker[mine] - first, positions[mine] - start] < score[mine]]
                pool_rank[missed] += 1
                lang_rank[missed] += 1
    return ExactRanks(score, lang_rank, pool_rank)


def pair_scores(queries: np.ndarray, pool, pairs: pd.DataFrame, asking: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """The score (float32) of each row of ``pairs``, as ``exact_scores`` computes it: QUERY_ROWS queries against
    their relevant candidates at a time (read from ``pool`` together)."""
    score = np.empty(len(pairs), dtype=np.float32)
    positions = pairs["pool_position"].to_numpy()
    for first in range(0, len(asking), QUERY_ROWS):
        rows = slice(first, first + QUERY_ROWS)
        filled = slots[rows] >= 0
        ids = slots[rows][filled]
        wanted, column = np.unique(positions[ids], return_inverse=True)
        scores = exact_scores(queries[asking[rows]], pool[wanted])
        score[ids] = scores[np.nonzero(filled)[0], column]
    return score


def counts_at_least(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n, R): per row of ``scores`` (n, N), how many of its scores are at least each of its ``thresholds`` (n, R;
    inf counts none).

    One threshold column at a time, so that nothing is larger than one (n, N) mask. Only scores at least a row's
    lowest threshold can count: when they are few (a trained model ranks its relevant candidates high) the counts
    run over those alone; when many (a random model's relevant candidates sit mid-pool), over the whole rows.
    """
    n, width = thresholds.shape
    above = scores >= thresholds.min(axis=1, keepdims=True)
    counts = np.empty((n, width), dtype=np.int64)
    if np.count_nonzero(above) < above.size // 4:
        row, column = np.nonzero(above)
        contenders = scores[row, column]
        for j in range(width):
            counts[:, j] = np.bincount(row[contenders >= thresholds[row, j]], minlength=n)
    else:
        for j in range(width):
            counts[:, j] = np.count_nonzero(scores >= thresholds[:, j : j + 1], axis=1)
    return counts


def exact_scores(queries: np.ndarray, pool) -> np.ndarray:
    """Scores (n, N) float32 of queries (n, d) against the pool (N, d; an array or a ``VectorFile``): float64
    products rounded to float32, the same for identical vectors at any position (module docstring)."""
    queries64 = queries.astype(np.float64)
    scores = np.empty((len(queries), len(pool)), dtype=np.float32)
    for start in range(0, len(pool), POOL_BLOCK):
        block = slice(start, start + POOL_BLOCK)
        scores[:, block] = queries64 @ np.asarray(pool[block], dtype=np.float64).T
    return scores


def searched_ranks(found: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of relevant candidates in retrieved lists ``found`` (n, depth) of corpus columns (-1: no result); inf if
    not there. Rows are kept apart by offsetting row i's ids by i * width, then looked up in one sorted array."""
    n, depth = found.shape
    width = int(max(found.max(initial=0), rel.max(initial=0))) + 2
    keys = (found + 1) + np.arange(n)[:, None] * width  # +1: the -1 of "no result" stays inside its row
    order = np.argsort(keys, axis=None)
    sorted_keys = keys.ravel()[order]
    wanted = (rel + 1) + np.arange(n)[:, None] * width
    at = np.minimum(np.searchsorted(sorted_keys, wanted), sorted_keys.size - 1)
    hit = (sorted_keys[at] == wanted) & (rel >= 0)
    ranks = np.where(hit, order[at] % depth + 1.0, np.inf)
    rel_ge = np.where(hit, np.argsort(np.argsort(ranks, axis=1), axis=1) + 1.0, 0.0)
    return ranks, rel_ge


def metrics_from_ranks(ranks: np.ndarray, rel_ge: np.ndarray, n_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query metrics from the ranks (n, R) of the relevant candidates (inf: padding or not retrieved)."""
    first = ranks.min(axis=1)
    gains = np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0).sum(axis=1)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, 12)))[np.minimum(n_relevant, 10) - 1]
    return {
        "map": (rel_ge / ranks).sum(axis=1) / n_relevant,
        "mrr@10": np.where(first <= 10, 1.0 / first, 0.0),
        "recall@1": (ranks <= 1).sum(axis=1) / n_relevant,
        "recall@10": (ranks <= 10).sum(axis=1) / n_relevant,
        "recall@100": (ranks <= 100).sum(axis=1) / n_relevant,
        "ndcg@10": gains / ideal,
    }


def language_bias(ranks: np.ndarray, rel: np.ndarray, corpus: Corpus, query_lang: str) -> tuple[dict, ...]:
    """Multi setting: mean over queries of max - min rank of their relevant candidates (queries with >= 2 ranked),
    and the share of queries whose best-ranked relevant candidate is in the query's language; then the per-query
    rank distances and which queries they are of (a mask over ``ranks``' rows), for paired tests."""
    finite = np.isfinite(ranks)
    spread = np.where(finite, ranks, -np.inf).max(axis=1) - ranks.min(axis=1)
    has_two = finite.sum(axis=1) >= 2
    best = rel[np.arange(len(rel)), ranks.argmin(axis=1)]
    start, stop = corpus.starts.get(query_lang, 0), corpus.stops.get(query_lang, 0)
    same_lang = (best >= start) & (best < stop) & finite.any(axis=1)
    summary = {
        "rank_distance": float(spread[has_two].mean()) if has_two.any() else float("nan"),
        "same_lang_first_rate": float(same_lang.mean()),
        "n_queries": len(rel),
    }
    return summary, spread[has_two], has_two


def build_indexes(pool_vectors, corpus: Corpus, eval_cfg: EvalConfig) -> dict:
    """One faiss index per corpus language and one for the pool, by corpus_lang ('all' for the pool)."""
    return dict(indexes_one_at_a_time(pool_vectors, corpus, eval_cfg))


def indexes_one_at_a_time(
    pool_vectors: np.ndarray, corpus: Corpus, eval_cfg: EvalConfig
) -> Iterator[tuple[str, faiss.Index]]:
    """(corpus_lang, index) for each corpus language, then the pool ('all'), each built when asked for: a caller
    that saves and drops each holds one index at a time."""
    for lang in [*corpus.langs, POOL]:
        yield lang, build_index(pool_vectors[corpus.block(lang)], eval_cfg)


def per_query_frame(blocks: list[tuple[dict, np.ndarray, dict[str, np.ndarray]]]) -> pd.DataFrame:
    """Long table (one row per setting, query and metric) from per-setting metric arrays (each block: its key, its
    qids, and per metric an array aligned with them). The text columns are categoricals built from codes: a million
    rows without a million Python strings."""
    keys = ("dataset", "setting", "query_lang", "corpus_lang")
    if not blocks:
        return pd.DataFrame(columns=[*keys, "qid", "metric", "value"])
    sizes = [len(qids) * len(values) for _, qids, values in blocks]
    columns = {name: _repeated([key[name] for key, _, _ in blocks], sizes) for name in keys}
    qids, qid_codes = np.unique(np.concatenate([qids for _, qids, _ in blocks]), return_inverse=True)
    starts = np.cumsum([0] + [len(q) for _, q, _ in blocks])
    codes = [
        np.tile(qid_codes[a:b], len(values))
        for (_, _, values), a, b in zip(blocks, starts[:-1], starts[1:], strict=True)
    ]
    columns["qid"] = pd.Categorical.from_codes(np.concatenate(codes), categories=qids)
    names = list(dict.fromkeys(name for _, _, values in blocks for name in values))  # METRICS, then rank_distance
    metric_codes = [np.repeat([names.index(name) for name in values], len(q)) for _, q, values in blocks]
    columns["metric"] = pd.Categorical.from_codes(np.concatenate(metric_codes), categories=names)
    columns["value"] = np.concatenate([np.concatenate(list(values.values())) for _, _, values in blocks])
    return pd.DataFrame(columns)


def _repeated(labels: list[str], sizes: list[int]) -> pd.Categorical:
    categories = sorted(set(labels))
    codes = np.repeat([categories.index(label) for label in labels], sizes)
    return pd.Categorical.from_codes(codes, categories=categories)
