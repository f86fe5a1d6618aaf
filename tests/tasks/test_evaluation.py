"""Evaluation on the real data: metrics against independent implementations, settings, ties, language bias."""

from __future__ import annotations

import os

import faiss
import ir_measures
import numpy as np
import pandas as pd
import pytest
from ir_measures import RR, R, nDCG
from sklearn.metrics import average_precision_score

from hbir.core.config import DEFAULT_LANGUAGES, EvalConfig
from hbir.core.errors import ConfigError
from hbir.core.names import METRICS
from models.encoder import BiEncoder
from tasks import evaluation
from tasks.embedding import DatasetEmbeddings, embed_dataset
from tasks.evaluation import build_indexes, evaluate, exact_scores, order_corpus
from tasks.indexing import build_index, load_index, save_index, search
from tasks.ingest import ingest_dataset
from tasks.tables import CANDIDATE_COLUMNS, QREL_COLUMNS, QUERY_COLUMNS, DatasetTables, frame
from tasks.vector_file import VectorFile

IR_MEASURES = {"mrr@10": RR @ 10, "recall@1": R @ 1, "recall@10": R @ 10, "recall@100": R @ 100, "ndcg@10": nDCG @ 10}


@pytest.fixture(scope="module")
def xquad(lareqa_dir) -> DatasetTables:
    return ingest_dataset(lareqa_dir, "xquad-r", DEFAULT_LANGUAGES)


@pytest.fixture(scope="module")
def mlqa(lareqa_dir) -> DatasetTables:
    return ingest_dataset(lareqa_dir, "mlqa-r", DEFAULT_LANGUAGES)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def informative_vectors(tables: DatasetTables, noise: float = 1.0, dim: int = 48, seed: int = 0) -> DatasetEmbeddings:
    """A question and its answer sentences share a direction, plus noise: ranks from 1 to deep in the corpus."""
    rng = np.random.default_rng(seed)
    direction = {qid: rng.normal(size=dim) for qid in tables.qrels["qid"].unique()}
    question_of = tables.qrels.drop_duplicates("cid").set_index("cid")["qid"]
    answers = [direction[question_of[c]] if c in question_of.index else np.zeros(dim) for c in tables.candidates["cid"]]
    queries = np.stack([direction[q] for q in tables.queries["qid"]])
    return DatasetEmbeddings(
        unit(queries + noise * rng.normal(size=queries.shape)),
        unit(np.stack(answers) + noise * rng.normal(size=(len(answers), dim))),
    )


@pytest.fixture(scope="module")
def evaluated(xquad, tiny_model_dir) -> dict[str, tuple[DatasetEmbeddings, object]]:
    """Real rankings: the random tiny encoder's embeddings of the real texts (with real ties: repeated texts), and
    embeddings that rank relevant candidates anywhere from first to deep in the pool; each evaluated once."""
    encoder = BiEncoder.from_dir(tiny_model_dir, query_prefix="query: ", passage_prefix="passage: ", max_length=64)
    tiny = embed_dataset(encoder, "tiny", xquad, "sentence", 256, cache_dir=None, log=lambda _: None)
    vectors = {"tiny encoder": tiny, "informative": informative_vectors(xquad)}
    return {name: (v, evaluate(xquad, v, EvalConfig())) for name, v in vectors.items()}


def reference(tables, vectors, query_lang, corpus_lang):
    """Per query of one setting: sklearn's AP over the full ranking and ir_measures (trec_eval) on the top 200,
    and whether a relevant candidate's score is tied with another candidate's (trec_eval breaks ties by name)."""
    in_query_lang = (tables.queries["lang"] == query_lang).to_numpy()
    in_corpus = (tables.candidates["lang"] == corpus_lang).to_numpy() if corpus_lang != "all" else slice(None)
    queries, candidates = tables.queries[in_query_lang], tables.candidates[in_corpus]
    # float64 products rounded to float32, as the evaluator scores (float32 products break ties of repeated texts)
    scores = vectors.queries[in_query_lang].astype(np.float64) @ vectors.candidates[in_corpus].T.astype(np.float64)
    scores = scores.astype(np.float32)
    relevant_cids = tables.qrels.groupby("qid")["cid"].apply(set)
    cids = candidates["cid"].to_numpy()
    ap, tied, qrels, run = {}, set(), [], []
    for i, qid in enumerate(queries["qid"]):
        is_relevant = np.isin(cids, list(relevant_cids[qid]))
        if not is_relevant.any():
            continue
        ap[qid] = average_precision_score(is_relevant, scores[i])
        if any((scores[i] == s).sum() > 1 for s in scores[i][is_relevant]):
            tied.add(qid)
        qrels += [ir_measures.Qrel(qid, cid, 1) for cid in cids[is_relevant]]
        top = np.argsort(-scores[i], kind="stable")[:200]
        run += [ir_measures.ScoredDoc(qid, cids[j], float(scores[i, j])) for j in top]
    trec = pd.DataFrame(
        [(m.query_id, str(m.measure), m.value) for m in ir_measures.iter_calc(IR_MEASURES.values(), qrels, run)]
    )
    return pd.Series(ap), trec.pivot(index=0, columns=1, values=2), tied


@pytest.mark.parametrize("model", ["tiny encoder", "informative"])
@pytest.mark.parametrize(("query_lang", "corpus_lang"), [("en", "en"), ("de", "zh"), ("th", "all")])
def test_metrics_equal_sklearn_and_trec_eval_on_real_rankings(xquad, evaluated, model, query_lang, corpus_lang):
    vectors, result = evaluated[model]
    mine = result.per_query.query("query_lang == @query_lang and corpus_lang == @corpus_lang")
    mine = mine.pivot(index="qid", columns="metric", values="value")
    ap, trec, tied = reference(xquad, vectors, query_lang, corpus_lang)
    assert len(mine) == len(ap) == 1190
    # mAP: exact over the full ranking, ties included (sklearn groups them as we do)
    np.testing.assert_allclose(mine.loc[ap.index, "map"], ap, rtol=1e-9, atol=1e-12)
    untied = [qid for qid in trec.index if qid not in tied]
    assert len(untied) >= 0.6 * len(trec)  # the tiny byte-level encoder ties truncated texts
    for name, measure in IR_MEASURES.items():
        np.testing.assert_allclose(mine.loc[untied, name], trec.loc[untied, str(measure)], atol=1e-9, err_msg=name)
    summary = result.metrics.query("query_lang == @query_lang and corpus_lang == @corpus_lang")
    assert summary.set_index("metric")["value"]["map"] == pytest.approx(ap.mean())


@pytest.mark.parametrize(("dataset", "languages", "queries_per_lang"), [("xquad-r", 11, {1190}), ("mlqa-r", 7, None)])
def test_every_setting_and_metric_is_there(xquad, mlqa, dataset, languages, queries_per_lang):
    tables = xquad if dataset == "xquad-r" else mlqa
    result = evaluate(tables, informative_vectors(tables), EvalConfig())
    pairs = result.metrics.drop_duplicates(["setting", "query_lang", "corpus_lang"])
    assert pairs["setting"].value_counts().to_dict() == {
        "mono": languages,
        "cross": languages * (languages - 1),
        "multi": languages,
    }
    assert (result.metrics.groupby(["setting", "query_lang", "corpus_lang"])["metric"].apply(set) == set(METRICS)).all()
    assert result.metrics["value"].between(0, 1).all()
    standard = result.per_query[result.per_query["metric"] != "rank_distance"]
    assert len(standard) == result.metrics["n_queries"].sum()
    # per query, the multi setting's rank distance too: its mean per query language is the language bias
    distances = result.per_query[result.per_query["metric"] == "rank_distance"]
    assert set(distances["setting"]) == {"multi"} and set(distances["corpus_lang"]) == {"all"}
    means = distances.groupby("query_lang", observed=True)["value"].mean()
    bias = result.language_bias.set_index("query_lang")["rank_distance"]
    np.testing.assert_allclose(means.loc[bias.index], bias, rtol=1e-12)
    if queries_per_lang:  # XQuAD-R is fully parallel: every question counts in every setting
        assert set(result.metrics["n_queries"]) == queries_per_lang
    else:  # MLQA-R: a question counts in X -> Y only if it has an answer in Y
        en_en = result.metrics.query("query_lang == 'en' and corpus_lang == 'en'")["n_queries"].iloc[0]
        en_de = result.metrics.query("query_lang == 'en' and corpus_lang == 'de'")["n_queries"].iloc[0]
        en_questions_with_de = tables.queries.query("lang == 'de'")["qid"].isin(
            tables.queries.query("lang == 'en'")["qid"]
        )
        assert en_en == 1148 and en_de == en_questions_with_de.sum()
    assert list(result.language_bias["query_lang"]) == sorted(tables.queries["lang"].unique())


def hand_made(scores_by_language: dict[str, list[float]]) -> tuple[DatasetTables, DatasetEmbeddings]:
    """One English question 'q' whose relevant candidates are the first of each language; candidate scores as given
    (2-d unit vectors at the angle whose cosine with the query is the score)."""
    candidates, vectors = [], []
    for lang, scores in scores_by_language.items():
        for i, score in enumerate(scores):
            candidates.append(
                {"dataset": "toy", "cid": f"{lang}{i}", "lang": lang, "doc_id": "d", "text": "t", "context": "t"}
            )
            vectors.append([score, np.sqrt(1 - score**2)])
    tables = DatasetTables(
        "toy",
        frame([{"dataset": "toy", "qid": "q", "lang": "en", "text": "?"}], QUERY_COLUMNS),
        frame(candidates, CANDIDATE_COLUMNS),
        frame([{"dataset": "toy", "qid": "q", "cid": f"{lang}0"} for lang in scores_by_language], QREL_COLUMNS),
    )
    return tables, DatasetEmbeddings(np.array([[1.0, 0.0]], np.float32), np.array(vectors, np.float32))


def test_ranks_language_bias_and_ties_by_hand():
    # pool ranks: de0 .9 -> 1; en1 .8 -> 2; en0 .5 ties with de1 .5 -> both at 4 (pessimistic); en2 .1 -> 5
    tables, vectors = hand_made({"en": [0.5, 0.8, 0.1], "de": [0.9, 0.5]})
    result = evaluate(tables, vectors, EvalConfig())
    value = result.metrics.set_index(["corpus_lang", "metric"])["value"]
    assert value["en", "map"] == pytest.approx(1 / 2)  # en0 ranked 2nd in English
    assert value["de", "map"] == 1.0 and value["de", "mrr@10"] == 1.0
    # multi: relevant de0 at rank 1 (precision 1/1), en0 at rank 4 with 2 relevant scoring >= .5 (precision 2/4)
    assert value["all", "map"] == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert value["all", "recall@1"] == 0.5 and value["all", "ndcg@10"] == pytest.approx(
        (1 + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    )
    bias = result.language_bias.iloc[0]
    assert bias["rank_distance"] == 4 - 1 and bias["same_lang_first_rate"] == 0.0  # the best hit is German


def three_languages(tables: DatasetTables) -> DatasetTables:
    keep = ["de", "en", "zh"]
    candidates = tables.candidates[tables.candidates["lang"].isin(keep)]
    return DatasetTables(
        tables.name,
        tables.queries[tables.queries["lang"].isin(keep)].reset_index(drop=True),
        candidates.reset_index(drop=True),
        tables.qrels[tables.qrels["cid"].isin(candidates["cid"])].reset_index(drop=True),
    )


def test_an_exhaustive_approximate_index_agrees_with_the_exact_one(xquad):
    xquad = three_languages(xquad)
    vectors = informative_vectors(xquad)
    exact = evaluate(xquad, vectors, EvalConfig()).metrics
    exhaustive = EvalConfig(index="ivf", ivf_nlist=16, ivf_nprobe=16, depth=5_000)  # every cluster, every rank
    approximate = evaluate(xquad, vectors, exhaustive).metrics
    merged = exact.merge(approximate, on=["setting", "query_lang", "corpus_lang", "metric"])
    np.testing.assert_allclose(merged["value_x"], merged["value_y"], atol=1e-3)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,SQ8"])
def test_a_faiss_factory_index_is_built_trained_and_searched(xquad, factory):
    """eval.index as a faiss index_factory string: exhaustive IVF agrees with the exact index; a compressed one
    (8-bit scalar quantisation, 48 bytes per vector instead of 192) keeps most of its quality."""
    xquad = three_languages(xquad)
    vectors = informative_vectors(xquad)
    exact = evaluate(xquad, vectors, EvalConfig()).metrics
    factory_cfg = EvalConfig(index=factory, ivf_nprobe=16, depth=5_000, index_train_sample=2_000)
    approximate = evaluate(xquad, vectors, factory_cfg).metrics
    merged = exact.merge(approximate, on=["setting", "query_lang", "corpus_lang", "metric"])
    maps = merged[merged["metric"] == "map"]
    if factory == "IVF16,Flat":
        np.testing.assert_allclose(merged["value_x"], merged["value_y"], atol=1e-3)
    else:
        assert (maps["value_y"] > 0.95 * maps["value_x"]).all() and (maps["value_y"] < maps["value_x"] + 1e-3).all()


def test_a_factory_index_gets_fewer_lists_for_a_small_block_and_one_that_cannot_be_built_says_why(xquad):
    xquad = three_languages(xquad)
    vectors = informative_vectors(xquad)
    corpus = order_corpus(xquad)
    built = build_indexes(vectors.candidates[corpus.order], corpus, EvalConfig(index="IVF65536,Flat"))
    for lang, index in built.items():  # 65536 lists cannot be trained on 1,190 vectors: n / 39 of them
        n = len(np.arange(len(corpus.order))[corpus.block(lang)])
        assert index.ntotal == n and faiss.extract_index_ivf(index).nlist == n // 39
    with pytest.raises(ConfigError, match=r"eval.index 'IVF\d+,PQ16x12' cannot be built over \d+ vectors"):
        evaluate(xquad, vectors, EvalConfig(index="IVF16,PQ16x12"))  # 4096 PQ centroids, 1,190 vectors
    with pytest.raises(ValueError, match="faiss index_factory string"):
        EvalConfig(index="IVF16,PQ7x")


def test_an_approximate_index_counts_relevant_candidates_below_its_depth_as_not_found(xquad):
    xquad = three_languages(xquad)
    vectors = informative_vectors(xquad, noise=3.0)  # weak model: many relevant candidates far down the pool
    shallow = evaluate(xquad, vectors, EvalConfig(index="hnsw", depth=100)).metrics
    exact = evaluate(xquad, vectors, EvalConfig()).metrics
    multi_map = {
        name: m.query("setting == 'multi' and metric == 'map'")["value"].mean()
        for name, m in [("shallow", shallow), ("exact", exact)]
    }
    assert multi_map["shallow"] < multi_map["exact"]
    recall = {
        name: m.query("setting == 'multi' and metric == 'recall@10'")["value"].mean()
        for name, m in [("shallow", shallow), ("exact", exact)]
    }
    assert recall["shallow"] == pytest.approx(recall["exact"], abs=0.02)


def test_a_repeated_candidate_ties_with_its_copy_wherever_it_sits():
    # XQuAD-R repeats answer sentences; float32 matrix products can score a copy differently by its row (an ulp),
    # ranking one copy above the other and changing mAP: OpenBLAS's AVX2 kernel does (OPENBLAS_CORETYPE=Haswell
    # breaks these ties with `queries @ pool.T`), its AVX-512 one happens not to
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((600, 384)).astype(np.float32)
    pool = rng.standard_normal((4099, 384)).astype(np.float32)
    copies = [1, 2, 17, 1000, 4093, 4098]
    pool[copies] = pool[0]
    scores = exact_scores(queries, pool)
    assert scores.dtype == np.float32 and scores.shape == (600, 4099)
    for row in copies:
        np.testing.assert_array_equal(scores[:, row], scores[:, 0])


def test_a_pool_read_a_block_at_a_time_from_its_file_gives_the_same_metrics(xquad, tmp_path, monkeypatch):
    xquad = three_languages(xquad)
    vectors = informative_vectors(xquad)
    whole = evaluate(xquad, vectors, EvalConfig()).metrics
    np.save(tmp_path / "candidates.npy", vectors.candidates)
    on_disk = DatasetEmbeddings(vectors.queries, VectorFile(tmp_path / "candidates.npy"))
    monkeypatch.setattr(evaluation, "POOL_BLOCK", 500)  # blocks that end inside a language and at its end
    monkeypatch.setattr(evaluation, "QUERY_ROWS", 7)
    pd.testing.assert_frame_equal(whole, evaluate(xquad, on_disk, EvalConfig()).metrics)
    exhaustive = EvalConfig(index="IVF8,Flat", ivf_nprobe=8, depth=len(xquad.candidates))  # read by the index too
    pd.testing.assert_frame_equal(
        evaluate(xquad, vectors, exhaustive).metrics, evaluate(xquad, on_disk, exhaustive).metrics
    )


def test_a_relevant_candidate_counts_itself_when_another_product_shape_rounds_its_score_apart():
    # a candidate whose float64 dot product rounds to float32 differently as a 1 x 1 product (its own score) and
    # inside the pass's (1 x 8) product: ranks must still count it, so its rank is 1, not 0 (mAP 1, not inf)
    dim, rng = 384, np.random.default_rng(1)
    for _ in range(3000):
        where = rng.choice(dim, 4, replace=False)
        query, pool = np.zeros((1, dim), np.float32), np.zeros((8, dim), np.float32)
        query[0, where], pool[0, where] = 1.0, [1.0, 2.0**-24, 2.0**-53, 2.0**-53]
        if exact_scores(query, pool[[0]])[0, 0] != exact_scores(query, pool)[0, 0]:
            break
    else:
        pytest.skip("this BLAS rounds both product shapes alike here")
    tables = DatasetTables(
        "t",
        frame([{"dataset": "t", "qid": "q", "lang": "en", "text": "?"}], QUERY_COLUMNS),
        frame(
            [
                {"dataset": "t", "cid": f"c{i}", "lang": "en", "doc_id": "d", "text": "t", "context": "t"}
                for i in range(8)
            ],
            CANDIDATE_COLUMNS,
        ),  # fmt: skip
        frame([{"dataset": "t", "qid": "q", "cid": "c0"}], QREL_COLUMNS),
    )
    metrics = evaluate(tables, DatasetEmbeddings(query, pool), EvalConfig()).metrics.set_index(["setting", "metric"])
    assert metrics.loc[("multi", "map"), "value"] == 1.0 and metrics.loc[("mono", "recall@1"), "value"] == 1.0


def test_a_vector_file_reads_rows_as_numpy_indexes_them_from_the_file_it_opened(tmp_path):
    rows = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    np.save(tmp_path / "v.npy", rows)
    file = VectorFile(tmp_path / "v.npy")
    view = file[10:60][5:]  # views of views: nothing read yet
    assert isinstance(view, VectorFile) and view.shape == (45, 4) and len(file[90:200]) == 10
    np.testing.assert_array_equal(np.asarray(view), rows[15:60])
    np.testing.assert_array_equal(view[[0, 44, 3]], rows[[15, 59, 18]])
    np.testing.assert_array_equal(view[[7, 5, 6, 6, -45, 30]], rows[[22, 20, 21, 21, 15, 45]])  # runs, repeats
    np.testing.assert_array_equal(np.asarray(view, dtype=np.float64), rows[15:60].astype(np.float64))
    np.testing.assert_array_equal(view[-1], rows[59])  # an integer: one row, as numpy gives it
    mask = np.zeros(45, dtype=bool)
    mask[[2, 40]] = True
    np.testing.assert_array_equal(view[mask], rows[[17, 55]])
    with pytest.raises(IndexError, match="outside 0..44"):
        view[[45]]
    (tmp_path / "v.npy").unlink()  # the folder replaced by another run meanwhile: the open file is still read
    np.save(tmp_path / "v.npy", -rows)
    np.testing.assert_array_equal(np.asarray(view), rows[15:60])
    written = VectorFile.create(tmp_path / "w.npy", (100, 4))
    written[np.arange(50, 100)] = rows[50:]
    written[10:20][np.arange(10)] = rows[10:20]
    written[[33, 31, 32, 40, 31]] = rows[:5]  # in any order; a row given twice keeps its last value, as numpy's
    written[95:] = 0
    expected = np.zeros_like(rows)
    expected[10:20], expected[50:] = rows[10:20], rows[50:]
    expected[[33, 31, 32, 40, 31]] = rows[:5]
    expected[95:] = 0
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), expected)
    np.testing.assert_array_equal(np.asarray(VectorFile(tmp_path / "w.npy")), expected)
    with open(tmp_path / "v.npy", "r+b") as stream:  # cut short by a full disk or a copy stopped halfway
        stream.truncate(stream.seek(0, os.SEEK_END) - 4 * 4 * 3)
    with pytest.raises(ValueError, match="v.npy: ends before row 100 of 100"):
        np.asarray(VectorFile(tmp_path / "v.npy")[90:])


@pytest.mark.parametrize("relevant_score", ["high", "mid-pool"])  # a trained model's ranks; a random model's
def test_ranks_are_counts_of_candidates_scoring_at_least_as_high_with_ties_and_padding(relevant_score):
    rng = np.random.default_rng(1)
    scores = np.round(rng.uniform(-1, 1, (40, 3000)), 2).astype(np.float32)  # rounded: many ties
    rel = rng.integers(0, 3000, (40, 5))
    rel[:, 3] = rel[:, 0]  # a relevant score tied with another relevant one
    rel[:10, 4] = -1  # padding
    if relevant_score == "high":
        scores[np.arange(40)[:, None], np.maximum(rel, 0)] = np.round(rng.uniform(0.95, 1, (40, 5)), 2)
    thresholds = np.where(rel >= 0, np.take_along_axis(scores, np.maximum(rel, 0), axis=1), np.inf)
    counts = evaluation.counts_at_least(scores, thresholds)
    for i, j in np.ndindex(*rel.shape):
        assert counts[i, j] == (np.count_nonzero(scores[i] >= scores[i, rel[i, j]]) if rel[i, j] >= 0 else 0)


def test_candidates_in_any_row_order_give_the_same_metrics_and_a_language_grouped_pool_is_not_copied(xquad):
    xquad = three_languages(xquad)
    vectors = informative_vectors(xquad)
    grouped = order_corpus(xquad)
    assert grouped.in_table_order  # LAReQA lists its candidates language by language
    assert np.shares_memory(grouped.pool_vectors(vectors.candidates), vectors.candidates)
    rows = np.random.default_rng(0).permutation(len(xquad.candidates))  # languages interleaved, as a BEIR corpus may
    shuffled = DatasetTables(
        xquad.name, xquad.queries, xquad.candidates.iloc[rows].reset_index(drop=True), xquad.qrels
    )  # fmt: skip
    shuffled_vectors = DatasetEmbeddings(vectors.queries, vectors.candidates[rows])
    assert not order_corpus(shuffled).in_table_order
    pd.testing.assert_frame_equal(
        evaluate(xquad, vectors, EvalConfig()).metrics, evaluate(shuffled, shuffled_vectors, EvalConfig()).metrics
    )


def test_candidates_on_disk_in_any_row_order_are_put_in_pool_order_in_a_file_of_their_own(xquad, tmp_path):
    xquad = three_languages(xquad)
    vectors = informative_vectors(xquad)
    rows = np.random.default_rng(0).permutation(len(xquad.candidates))  # languages interleaved
    shuffled = DatasetTables(xquad.name, xquad.queries, xquad.candidates.iloc[rows].reset_index(drop=True), xquad.qrels)
    (tmp_path / "vectors").mkdir()
    np.save(tmp_path / "vectors" / "candidates.npy", vectors.candidates[rows])
    on_disk = DatasetEmbeddings(vectors.queries, VectorFile(tmp_path / "vectors" / "candidates.npy"))
    corpus = order_corpus(shuffled)
    pooled = corpus.pool_vectors(on_disk.candidates)
    assert isinstance(pooled, VectorFile)  # not a copy in memory
    np.testing.assert_array_equal(np.asarray(pooled), vectors.candidates[rows][corpus.order])
    assert [path.name for path in (tmp_path / "vectors").iterdir()] == ["candidates.npy"]  # nothing left behind
    pd.testing.assert_frame_equal(
        evaluate(xquad, vectors, EvalConfig()).metrics, evaluate(shuffled, on_disk, EvalConfig()).metrics
    )


def test_a_saved_ivf_index_loaded_memory_mapped_searches_its_file_with_the_same_results(xquad, tmp_path):
    vectors = informative_vectors(three_languages(xquad))
    built = build_index(vectors.candidates, EvalConfig(index="IVF16,SQ8", ivf_nprobe=4, index_train_sample=2_000))
    save_index(built, tmp_path / "pool.faiss")
    mapped = load_index(tmp_path / "pool.faiss", mmap=True)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # the codes stay in the file, read through a memory map
    np.testing.assert_array_equal(search(mapped, vectors.queries, 100)[1], search(built, vectors.queries, 100)[1])


@pytest.mark.parametrize("setting", ["cross", "multi"])
def test_rankings_read_from_a_file_a_block_at_a_time_are_each_corpus_best_candidates(xquad, setting, tmp_path):
    from tasks import rankings

    xquad = three_languages(xquad)
    vectors = informative_vectors(xquad)
    np.save(tmp_path / "candidates.npy", vectors.candidates)
    on_disk = DatasetEmbeddings(vectors.queries, VectorFile(tmp_path / "candidates.npy"))
    with pytest.MonkeyPatch.context() as patch:  # blocks that end inside a language, a few queries at a time
        patch.setattr(rankings, "POOL_BLOCK", 300)
        patch.setattr(rankings, "QUERY_ROWS", 100)
        ranked, qrels = rankings.setting_rankings(xquad, on_disk, setting, depth=50)
    for query_id in ranked["query_id"].drop_duplicates().sample(40, random_state=0):
        mine = ranked[ranked["query_id"] == query_id]
        qid, query_lang, corpus_lang = mine.iloc[0][["qid", "query_lang", "corpus_lang"]]
        row = np.flatnonzero((xquad.queries["qid"] == qid) & (xquad.queries["lang"] == query_lang))
        in_corpus = (xquad.candidates["lang"] == corpus_lang).to_numpy() if corpus_lang != "all" else slice(None)
        scores = exact_scores(vectors.queries[row], vectors.candidates[in_corpus])[0]
        best = np.argsort(-scores, kind="stable")[:50]
        assert mine["cid"].tolist() == xquad.candidates["cid"].to_numpy()[in_corpus][best].tolist()
        np.testing.assert_array_equal(mine["score"].to_numpy(), scores[best])
        assert mine["rank"].tolist() == list(range(1, 51))
    assert set(qrels["query_id"]) == set(ranked["query_id"])
