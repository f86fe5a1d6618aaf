"""Batch sampling: the invariants in-batch negatives rely on, the mono share, determinism and resumable state."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbir.errors import HbirError
from tasks.batching import BatchSampler, training_pairs
from tasks.ingest import ingest_dataset
from tasks.tables import CANDIDATE_COLUMNS, QREL_COLUMNS, QUERY_COLUMNS, DatasetTables, frame

LANGS = ["ar", "de", "en", "es", "zh"]


@st.composite
def pair_tables(draw, min_groups: int = 8) -> pd.DataFrame:
    """Random training pairs: groups in 1-5 languages, passages drawn from a small pool so texts repeat."""
    n_groups = draw(st.integers(min_groups, 30))
    pool = draw(st.integers(n_groups // 2, 3 * n_groups))
    rows = []
    for g in range(n_groups):
        for lang in draw(st.lists(st.sampled_from(LANGS), min_size=1, max_size=5, unique=True)):
            passage = f"p{draw(st.integers(0, pool))}"
            rows.append({"dataset": "d", "qid": f"q{g}", "lang": lang, "query": f"{lang}-q{g}", "passage": passage})
    return pd.DataFrame(rows)


def sampler_or_none(pairs: pd.DataFrame, **kwargs) -> BatchSampler | None:
    """A sampler, or None when the drawn data cannot fill batches (that refusal is tested separately)."""
    try:
        sampler = BatchSampler(pairs, **kwargs)
        [sampler.batch(step) for step in range(1, 4)]
    except HbirError:
        return None
    return sampler


def batches(sampler: BatchSampler, steps: int):
    """The sampler's batches; a step refused because passages repeat too much to fill it is left out.

    With texts drawn from a small pool, some batches cannot be filled with distinct passages: refusing is right
    there (test_a_batch_that_cannot_hold_distinct_passages_is_refused); returning duplicates would not be.
    """
    for step in range(1, steps + 1):
        try:
            yield sampler.batch(step)
        except HbirError as error:
            assert "cannot fill a batch" in str(error)


def check_batch(batch, pairs: pd.DataFrame, batch_size: int, cross_same_language: bool = False) -> None:
    texts = {(row.qid, row.lang): (row.query, row.passage) for row in pairs.itertuples()}
    assert len(batch.qids) == batch_size
    # two pairs of one group: a translation of the positive would be a false negative
    assert len(set(batch.qids)) == batch_size
    # the same passage text twice: the positive would also be a negative
    assert len(set(batch.passages)) == batch_size
    for qid, query, passage, x, y in zip(
        batch.qids, batch.queries, batch.passages, batch.query_langs, batch.passage_langs, strict=True
    ):
        assert texts[(qid, x)][0] == query and texts[(qid, y)][1] == passage  # the group's own texts
    if batch.kind == "mono":
        assert len(set(batch.query_langs) | set(batch.passage_langs)) == 1
    elif not cross_same_language:
        assert all(x != y for x, y in zip(batch.query_langs, batch.passage_langs, strict=True))


@settings(max_examples=40, deadline=None)
@given(pairs=pair_tables(), batch_size=st.integers(2, 6), mono_share=st.sampled_from([0.0, 0.3, 1.0]))
def test_every_batch_keeps_the_invariants(pairs, batch_size, mono_share):
    sampler = sampler_or_none(pairs, batch_size=batch_size, mono_share=mono_share, seed=1)
    if sampler is not None:
        for batch in batches(sampler, 30):
            check_batch(batch, pairs, batch_size)


@settings(max_examples=20, deadline=None)
@given(pairs=pair_tables(), batch_size=st.integers(2, 4))
def test_cross_same_language_lets_x_equal_y_and_keeps_the_rest(pairs, batch_size):
    sampler = sampler_or_none(pairs, batch_size=batch_size, mono_share=0.0, cross_same_language=True)
    if sampler is not None:
        for batch in batches(sampler, 30):
            check_batch(batch, pairs, batch_size, cross_same_language=True)


@settings(max_examples=10, deadline=None)
@given(pairs=pair_tables(min_groups=12), alpha=st.floats(0.0, 1.0))
def test_the_share_of_mono_batches_is_alpha(pairs, alpha):
    """Guards against a hybrid sampler that ignores alpha (or swaps mono and cross)."""
    sampler = sampler_or_none(pairs, batch_size=2, mono_share=alpha)
    if sampler is None:
        return
    n = 2000
    kinds = [batch.kind for batch in batches(sampler, n)]
    n, mono = len(kinds), kinds.count("mono")
    sigma = math.sqrt(n * alpha * (1 - alpha))
    assert abs(mono - n * alpha) <= 5 * sigma + 1e-9  # 5 sigma: a fair sampler fails ~1 in 2 million runs


def two_languages(dataset: str, groups: int) -> pd.DataFrame:
    rows = [
        {"dataset": dataset, "qid": f"{dataset}{g}", "lang": lang, "query": f"{lang}q{g}", "passage": f"{lang}p{g}"}
        for g in range(groups)
        for lang in ("de", "en")
    ]
    return pd.DataFrame(rows)


def test_datasets_are_chosen_in_proportion_to_their_size():
    pairs = pd.concat([two_languages("big", 300), two_languages("small", 100)])
    sampler = BatchSampler(pairs, batch_size=4, mono_share=0.5)
    n = 4000
    counts = Counter(sampler.batch(step).dataset for step in range(1, n + 1))
    # P(big) = 300 / 400 = 0.75; sigma = sqrt(4000 * 0.75 * 0.25) = 27.4
    assert abs(counts["big"] - 3000) < 5 * 27.4


def test_mono_languages_weighted_by_groups():
    """Uniform: each language equally often, whatever its size; 'groups': in proportion to its number of groups."""
    pairs = pd.concat(
        [two_languages("d", 90), two_languages("d", 30).replace({"en": "zh"}).assign(qid=lambda f: f.qid + "x")]
    )
    # en has 90 groups, zh 30, de 120 (every group has de)
    uniform, weighted = (BatchSampler(pairs, 4, 1.0, mono_languages=w) for w in ("uniform", "groups"))
    uniform = Counter(batch.query_langs[0] for batch in batches(uniform, 3000))
    weighted = Counter(batch.query_langs[0] for batch in batches(weighted, 3000))
    assert all(abs(uniform[lang] - 1000) < 5 * 25.8 for lang in ("de", "en", "zh"))  # sigma = sqrt(3000 * 1/3 * 2/3)
    assert abs(weighted["de"] - 1500) < 5 * 27.4 and abs(weighted["zh"] - 375) < 5 * 18.2  # 120/240, 30/240


def test_same_seed_same_batches_other_seed_other_batches():
    pairs = two_languages("d", 50)
    first, again, other = (BatchSampler(pairs, 4, 0.5, seed=seed) for seed in (7, 7, 8))
    assert [first.batch(s) for s in range(1, 20)] == [again.batch(s) for s in range(1, 20)]
    assert [first.batch(s) for s in range(1, 20)] != [other.batch(s) for s in range(1, 20)]


def test_a_restored_sampler_continues_where_the_saved_one_was():
    """What a checkpoint relies on: batches after a resume are the batches the uninterrupted run would have seen."""
    pairs = two_languages("d", 50)
    original = BatchSampler(pairs, 4, 0.5, seed=3)
    stream = iter(original)
    [next(stream) for _ in range(5)]
    state = original.state_dict()
    expected = [next(stream) for _ in range(5)]

    restored = BatchSampler(pairs, 4, 0.5, seed=3)
    restored.load_state_dict(state)
    assert [batch.step for batch in expected] == [6, 7, 8, 9, 10]
    assert [b for _, b in zip(range(5), restored, strict=False)] == expected
    with pytest.raises(HbirError, match="seed 3"):
        BatchSampler(pairs, 4, 0.5, seed=4).load_state_dict(state)


@pytest.mark.parametrize(
    ("mono_share", "message"),
    [(1.0, "mono batches need 8 questions in one language, but its best-covered language has 5"),
     (0.0, "cross batches need 8 questions that exist in two languages, it has 5")],
)  # fmt: skip
def test_too_little_data_for_the_batch_size_is_refused_with_the_numbers(mono_share, message):
    with pytest.raises(HbirError, match=message):
        BatchSampler(two_languages("tiny-set", 5), batch_size=8, mono_share=mono_share)


def test_a_batch_that_cannot_hold_distinct_passages_is_refused():
    pairs = two_languages("d", 10).assign(passage="the same sentence")
    with pytest.raises(HbirError, match="cannot fill a batch of 4 pairs with distinct passages"):
        BatchSampler(pairs, batch_size=4, mono_share=0.5).batch(1)


def test_training_pairs_by_hand():
    queries = frame([["d", "q1", "en", "Who?"], ["d", "q1", "de", "Wer?"], ["d", "q2", "en", "What?"]], QUERY_COLUMNS)
    candidates = frame(
        [
            ["d", "en-1-1", "en", "doc-q1", "He did.", "He did. Then."],
            ["d", "en-1-2", "en", "doc-q1", "Then.", "He did. Then."],
            ["d", "de-1-1", "de", "doc-q1", "Er.", "Er."],
            ["d", "es-1-1", "es", "doc-q1", "Él.", "Él."],
        ],
        CANDIDATE_COLUMNS,
    )
    qrels = frame(
        [["d", "q1", "en-1-2"], ["d", "q1", "en-1-1"], ["d", "q1", "de-1-1"], ["d", "q1", "es-1-1"]], QREL_COLUMNS
    )
    pairs = training_pairs(DatasetTables("d", queries, candidates, qrels))
    # q1/en: two relevant English sentences, the smaller cid (en-1-1) wins; q1/es: no Spanish question;
    # q2: no relevant sentence at all
    assert pairs.to_dict("records") == [
        {"dataset": "d", "qid": "q1", "lang": "de", "query": "Wer?", "passage": "Er."},
        {"dataset": "d", "qid": "q1", "lang": "en", "query": "Who?", "passage": "He did."},
    ]


def test_real_mlqa_r_batches(lareqa_dir):
    tables = ingest_dataset(lareqa_dir, "mlqa-r", ["ar", "de", "en", "es", "hi", "vi", "zh"])
    pairs = training_pairs(tables)
    # every MLQA-R question has a relevant sentence in its own language (a data contract), so one pair per query
    assert len(pairs) == len(tables.queries) == 4199
    assert pairs["qid"].nunique() == 1148  # the English questions; the other languages translate a subset
    sampler = BatchSampler(pairs, batch_size=32, mono_share=0.5, seed=0)
    batches = [sampler.batch(step) for step in range(1, 301)]
    for batch in batches:
        check_batch(batch, pairs, 32)
    assert 0.4 < np.mean([b.kind == "mono" for b in batches]) < 0.6
