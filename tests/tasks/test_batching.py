"""Batch sampling: the invariants in-batch negatives rely on, the mono share, determinism and resumable state."""

from __future__ import annotations

import json
import math
from collections import Counter

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbir.core.config import DEFAULT_LANGUAGES
from hbir.core.errors import HbirError
from tasks.batching import Batch, BatchSampler, training_pairs
from tasks.ingest import ingest_dataset
from tasks.tables import CANDIDATE_COLUMNS, QREL_COLUMNS, QUERY_COLUMNS, DatasetTables, frame

LANGS = ["ar", "de", "en", "es", "zh"]
STEPS = 25  # batches per generated example: enough to meet most (group, language) draws of a small pool
SIGMAS = 5  # a fair sampler fails a 5-sigma check about once in 2 million runs


# --- generated data ------------------------------------------------------------------------------------------------


@st.composite
def pair_tables(draw) -> pd.DataFrame:
    """Training pairs of one or two datasets: groups in 1-5 languages, passages from a small pool so texts repeat.

    Both datasets use the qids q0, q1, ...: a group is a qid *within* a dataset. Query texts are unique, so a batch's
    texts can be traced back to their (dataset, qid, lang).
    """
    rows = []
    for dataset in draw(st.sampled_from([["d"], ["d", "e"]])):
        n_groups = draw(st.integers(4, 25))
        pool = draw(st.integers(n_groups // 2, 3 * n_groups))
        for g in range(n_groups):
            for lang in draw(st.lists(st.sampled_from(LANGS), min_size=1, max_size=len(LANGS), unique=True)):
                passage = f"p{draw(st.integers(0, pool))}"
                rows.append(
                    {
                        "dataset": dataset,
                        "qid": f"q{g}",
                        "lang": lang,
                        "query": f"{dataset}/{lang}/q{g}",
                        "passage": passage,
                    }
                )
    return pd.DataFrame(rows)


sampler_options = st.fixed_dictionaries(
    {
        "batch_size": st.integers(1, 4),
        "mono_share": st.sampled_from([0.0, 0.5, 1.0]),
        "seed": st.integers(0, 2**32),
        "mono_languages": st.sampled_from(["uniform", "groups"]),
        "cross_same_language": st.booleans(),
    }
)


def sampled(pairs: pd.DataFrame, **options) -> list[Batch]:
    """The first ``STEPS`` batches, or none when the data is refused as too small (tested on its own below).

    A step may be refused when passage texts repeat so much that the drawn languages leave too few distinct ones;
    refusing is right there, returning a batch with a repeated passage would not be. Those steps are left out.
    """
    try:
        sampler = BatchSampler(pairs, **options)
    except HbirError:
        return []
    batches = []
    for step in range(1, STEPS + 1):
        try:
            batches.append(sampler.batch(step))
        except HbirError as error:
            assert "cannot fill a batch" in str(error) and pairs["passage"].duplicated().any()
    return batches


def texts_of(pairs: pd.DataFrame) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(dataset, qid, lang) -> (query, passage): what each pair of a batch must be."""
    return {(r.dataset, r.qid, r.lang): (r.query, r.passage) for r in pairs.itertuples()}


# --- invariants ----------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(pairs=pair_tables(), options=sampler_options)
def test_no_group_twice_in_a_batch(pairs, options):
    """Guards against drawing groups with replacement: a translation of the positive would be a false negative."""
    for batch in sampled(pairs, **options):
        assert len(batch.qids) == options["batch_size"]
        assert len(set(batch.qids)) == len(batch.qids)


@settings(max_examples=60, deadline=None)
@given(pairs=pair_tables(), options=sampler_options)
def test_no_passage_text_twice_in_a_batch(pairs, options):
    """Guards against deduplicating by group only: two groups with one passage text make the positive a negative."""
    for batch in sampled(pairs, **options):
        assert len(set(batch.passages)) == len(batch.passages)


@settings(max_examples=60, deadline=None)
@given(pairs=pair_tables(), options=sampler_options)
def test_every_pair_is_its_groups_own_texts_from_the_batchs_dataset(pairs, options):
    """Guards against index mix-ups (a query with another group's passage, a language label off by one, a batch
    mixing datasets): each pair must be the query and passage of its qid, in the languages the batch reports."""
    texts = texts_of(pairs)
    for batch in sampled(pairs, **options):
        for qid, query, passage, x, y in zip(
            batch.qids, batch.queries, batch.passages, batch.query_langs, batch.passage_langs, strict=True
        ):
            assert texts[(batch.dataset, qid, x)][0] == query
            assert texts[(batch.dataset, qid, y)][1] == passage


@settings(max_examples=60, deadline=None)
@given(pairs=pair_tables(), options=sampler_options)
def test_mono_batches_are_in_one_language(pairs, options):
    """Guards against a mono batch whose language is drawn per pair (that would be a cross batch with X == Y)."""
    for batch in sampled(pairs, **options):
        if batch.kind == "mono":
            assert len(set(batch.query_langs) | set(batch.passage_langs)) == 1


@settings(max_examples=60, deadline=None)
@given(pairs=pair_tables(), options=sampler_options.filter(lambda o: not o["cross_same_language"]))
def test_cross_pairs_have_two_different_languages(pairs, options):
    """Guards against X == Y in the paper's X-Y batches (drawing X and Y independently with replacement)."""
    for batch in sampled(pairs, **options):
        if batch.kind == "cross":
            assert all(x != y for x, y in zip(batch.query_langs, batch.passage_langs, strict=True))


def test_cross_same_language_lets_x_equal_y_and_one_language_groups_in():
    """Guards against the LAReQA X-Y option being ignored: X == Y must happen, and groups in one language count."""
    pairs = pd.concat([two_languages("d", 20), one_language("d", 20, "zh")])
    batches = [BatchSampler(pairs, 4, 0.0, cross_same_language=True).batch(step) for step in range(1, 201)]
    pairs_seen = [(x, y) for b in batches for x, y in zip(b.query_langs, b.passage_langs, strict=True)]
    assert ("zh", "zh") in pairs_seen and ("en", "en") in pairs_seen and ("de", "en") in pairs_seen
    with pytest.raises(HbirError, match="4 questions that exist in two languages or more"):
        BatchSampler(one_language("d", 20, "zh"), 4, 0.0)


# --- refusals ------------------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(pairs=pair_tables(), options=sampler_options)
def test_data_is_refused_exactly_when_some_batch_kind_cannot_be_filled(pairs, options):
    """Guards against refusing usable data, and against accepting data that fails mid-training; the reference
    counts, per dataset, distinct passages per language (mono) and among the groups a cross batch may use."""
    b, share = options["batch_size"], options["mono_share"]
    too_small = False
    for _, part in pairs.groupby("dataset"):
        mono_ok = part.groupby("lang")["passage"].nunique().max() >= b
        langs = part.groupby("qid")["lang"].transform("size")
        eligible = part[langs >= (1 if options["cross_same_language"] else 2)]
        cross_ok = min(eligible["qid"].nunique(), eligible["passage"].nunique()) >= b
        too_small |= (share > 0 and not mono_ok) or (share < 1 and not cross_ok)
    if too_small:
        with pytest.raises(HbirError, match="lower train.batch_size"):
            BatchSampler(pairs, **options)
    else:
        BatchSampler(pairs, **options)


@settings(max_examples=40, deadline=None)
@given(pairs=pair_tables(), options=sampler_options.filter(lambda o: o["mono_share"] == 1.0))
def test_accepted_data_always_fills_mono_batches(pairs, options):
    """Guards against a mono batch failing mid-training: acceptance counts the distinct passages per language."""
    try:
        sampler = BatchSampler(pairs, **options)
    except HbirError:
        return
    for step in range(1, STEPS + 1):
        sampler.batch(step)


def test_a_batch_that_cannot_hold_distinct_passages_is_refused_not_returned():
    """Guards against filling a batch with a repeated passage when the distinct ones run out.

    q0 has "same" in both languages; q1 has "same" in de and "other" in en. Both groups are needed for a batch of
    2, so a cross batch is possible only when q1's passage is its en one (P = 1/2); the others must be refused.
    """
    pairs = pd.DataFrame(
        [
            ["d", "q0", "de", "q0-de", "same"],
            ["d", "q0", "en", "q0-en", "same"],
            ["d", "q1", "de", "q1-de", "same"],
            ["d", "q1", "en", "q1-en", "other"],
        ],
        columns=["dataset", "qid", "lang", "query", "passage"],
    )
    sampler, filled, refused = BatchSampler(pairs, 2, 0.0), 0, 0
    for step in range(1, 101):
        try:
            assert sorted(sampler.batch(step).passages) == ["other", "same"]
            filled += 1
        except HbirError as error:
            assert "d: cannot fill a batch of 2 pairs with distinct passages" in str(error)
            refused += 1
    assert filled > 20 and refused > 20  # each ~ 50 of 100


@pytest.mark.parametrize(
    ("mono_share", "message"),
    [
        (1.0, r"tiny-set: mono batches need 8 questions in one language, but its best-covered language has 5 .*de: 5"),
        (0.0, r"tiny-set: cross batches need 8 questions that exist in two languages or more.* it has 5 such"),
    ],
)
def test_too_little_data_for_the_batch_size_is_refused_with_the_numbers(mono_share, message):
    with pytest.raises(HbirError, match=message) as error:
        BatchSampler(two_languages("tiny-set", 5), batch_size=8, mono_share=mono_share)
    assert "lower train.batch_size (now 8)" in str(error.value)


def test_unusable_pairs_are_refused():
    """Guards against cryptic numpy errors from empty input or a (qid, lang) with two pairs."""
    with pytest.raises(HbirError, match="no training pairs"):
        BatchSampler(two_languages("d", 0), 4, 0.5)
    with pytest.raises(HbirError, match="repeat a \\(qid, lang\\), e.g. qid 'd0' in de"):
        BatchSampler(pd.concat([two_languages("d", 10), two_languages("d", 1)]), 4, 0.5)
    with pytest.raises(HbirError, match="lack columns \\['passage'\\]"):
        BatchSampler(two_languages("d", 10).drop(columns="passage"), 4, 0.5)


# --- distributions -------------------------------------------------------------------------------------------------


def two_languages(dataset: str, groups: int, langs: tuple[str, ...] = ("de", "en")) -> pd.DataFrame:
    """``groups`` groups, each in every language of ``langs``, all texts distinct."""
    rows = [
        {"dataset": dataset, "qid": f"{dataset}{g}", "lang": lang, "query": f"{lang}q{g}", "passage": f"{lang}p{g}"}
        for g in range(groups)
        for lang in langs
    ]
    return pd.DataFrame(rows, columns=["dataset", "qid", "lang", "query", "passage"])


def one_language(dataset: str, groups: int, lang: str) -> pd.DataFrame:
    return two_languages(dataset, groups, (lang,)).assign(qid=lambda f: f["qid"] + lang)


def within(count: int, n: int, p: float) -> bool:
    """Whether ``count`` successes in ``n`` draws fit probability ``p`` within ``SIGMAS`` binomial sigmas."""
    return abs(count - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_the_share_of_mono_batches_is_alpha(alpha):
    """Guards against a hybrid sampler that ignores alpha or swaps mono and cross; 0 and 1 must be pure."""
    sampler, n = BatchSampler(two_languages("d", 40), 4, alpha), 4000
    mono = sum(sampler.batch(step).kind == "mono" for step in range(1, n + 1))
    assert within(mono, n, alpha)
    assert (alpha == 0) <= (mono == 0) and (alpha == 1) <= (mono == n)


def test_datasets_are_chosen_in_proportion_to_their_groups():
    """Guards against picking datasets uniformly (or by pairs): a small set would be oversampled."""
    # big: 300 groups in 2 languages (600 pairs); small: 100 groups in 3 languages (300 pairs). P(big) = 300 / 400.
    pairs = pd.concat([two_languages("big", 300), two_languages("small", 100, ("de", "en", "es"))])
    sampler, n = BatchSampler(pairs, 4, 0.5), 4000
    counts = Counter(sampler.batch(step).dataset for step in range(1, n + 1))
    assert within(counts["big"], n, 0.75)


def test_mono_languages_uniform_or_by_groups():
    """Guards against the weighting option being ignored: uniform gives each language 1/3, 'groups' its share."""
    # de: 120 groups (every group), en: 90, zh: 30; by groups: P(de) = 120 / 240, P(zh) = 30 / 240
    pairs = pd.concat([two_languages("d", 90), two_languages("d", 30, ("de", "zh")).assign(qid=lambda f: f.qid + "x")])
    n, uniform, weighted = 3000, BatchSampler(pairs, 4, 1.0), BatchSampler(pairs, 4, 1.0, mono_languages="groups")
    uniform_counts = Counter(uniform.batch(step).query_langs[0] for step in range(1, n + 1))
    weighted_counts = Counter(weighted.batch(step).query_langs[0] for step in range(1, n + 1))
    assert all(within(uniform_counts[lang], n, 1 / 3) for lang in ("de", "en", "zh"))
    assert within(weighted_counts["de"], n, 0.5) and within(weighted_counts["zh"], n, 0.125)


def test_a_language_without_enough_groups_is_left_out_of_mono_batches():
    """Guards against a mono language that cannot fill a batch: zh has 3 groups, the batch needs 4."""
    pairs = pd.concat([two_languages("d", 20), one_language("d", 3, "zh")])
    sampler = BatchSampler(pairs, 4, 1.0)
    assert {sampler.batch(step).query_langs[0] for step in range(1, 200)} == {"de", "en"}
    assert sampler.coverage().set_index("lang")["mono"].to_dict() == {"de": True, "en": True, "zh": False}


def test_cross_languages_are_uniform_over_ordered_pairs():
    """Guards against a biased X/Y draw (e.g. Y always the next language): 3 languages give 6 (X, Y), each 1/6."""
    sampler = BatchSampler(two_languages("d", 30, ("de", "en", "es")), 5, 0.0)
    batches = [sampler.batch(step) for step in range(1, 601)]
    drawn = Counter(xy for b in batches for xy in zip(b.query_langs, b.passage_langs, strict=True))
    n = sum(drawn.values())  # 600 batches x 5 pairs
    assert len(drawn) == 6 and all(within(count, n, 1 / 6) for count in drawn.values())


def test_groups_are_drawn_uniformly():
    """Guards against taking the first groups of the table instead of a random sample (every group P = 4 / 40)."""
    sampler, n = BatchSampler(two_languages("d", 40), 4, 0.5), 2000
    counts = Counter(qid for step in range(1, n + 1) for qid in sampler.batch(step).qids)
    assert len(counts) == 40 and all(within(count, n, 4 / 40) for count in counts.values())


# --- determinism and resume ----------------------------------------------------------------------------------------


def test_same_seed_same_batches_other_seed_other_batches():
    """Guards against unseeded randomness (runs not reproducible) and a seed that is ignored."""
    pairs = two_languages("d", 50)
    first, again, other = (BatchSampler(pairs, 4, 0.5, seed=seed) for seed in (7, 7, 8))
    assert [first.batch(s) for s in range(1, 20)] == [again.batch(s) for s in range(1, 20)]
    assert [first.batch(s) for s in range(1, 20)] != [other.batch(s) for s in range(1, 20)]


def test_a_batch_does_not_depend_on_what_was_drawn_before():
    """Guards against one generator shared across steps: batch 7 must be batch 7 whatever came first."""
    pairs = two_languages("d", 50)
    fresh, used = BatchSampler(pairs, 4, 0.5, seed=1), BatchSampler(pairs, 4, 0.5, seed=1)
    stream = iter(used)
    streamed = [next(stream) for _ in range(10)]
    [used.batch(step) for step in (3, 100, 2)]
    assert fresh.batch(7) == used.batch(7) == streamed[6]
    assert [batch.step for batch in streamed] == list(range(1, 11))


def test_a_restored_sampler_continues_where_the_saved_one_was():
    """What a checkpoint relies on: batches after a resume are the batches the uninterrupted run would have seen."""
    pairs = two_languages("d", 50)
    original = BatchSampler(pairs, 4, 0.5, seed=3)
    stream = iter(original)
    [next(stream) for _ in range(5)]
    state = json.loads(json.dumps(original.state_dict()))  # what a checkpoint stores: plain JSON
    expected = [next(stream) for _ in range(5)]

    restored = BatchSampler(pairs, 4, 0.5, seed=3)
    restored.load_state_dict(state)
    assert state == {"seed": 3, "next_step": 6}
    assert [b for _, b in zip(range(5), restored, strict=False)] == expected
    assert [batch.step for batch in expected] == [6, 7, 8, 9, 10]
    with pytest.raises(HbirError, match="seed 3"):
        BatchSampler(pairs, 4, 0.5, seed=4).load_state_dict(state)


# --- training pairs ------------------------------------------------------------------------------------------------


def test_training_pairs_by_hand():
    queries = frame(
        [["d", "q1", "en", "Who?"], ["d", "q1", "de", "Wer?"], ["d", "q2", "en", "What?"], ["d", "q3", "es", "¿Qué?"]],
        QUERY_COLUMNS,
    )
    candidates = frame(
        [
            ["d", "en-1-1", "en", "doc-q1", "He did.", "He did. Then."],
            ["d", "en-1-2", "en", "doc-q1", "Then.", "He did. Then."],
            ["d", "de-1-1", "de", "doc-q1", "Er.", "Er."],
            ["d", "es-1-1", "es", "doc-q1", "Él.", "Él."],
            ["d", "en-3-0", "en", "doc-q3", "That.", "That."],
        ],
        CANDIDATE_COLUMNS,
    )
    qrels = frame(
        [
            ["d", "q1", "en-1-2"],
            ["d", "q1", "en-1-1"],
            ["d", "q1", "de-1-1"],
            ["d", "q1", "es-1-1"],
            ["d", "q3", "en-3-0"],
        ],
        QREL_COLUMNS,
    )
    pairs = training_pairs(DatasetTables("d", queries, candidates, qrels))
    # q1/en: two relevant English sentences, the smaller cid wins (en-1-1 < en-1-2, whatever the row order);
    # q1/es: a relevant sentence but no Spanish question; q2: no relevant sentence at all;
    # q3: a Spanish question but its only relevant sentence is English. So 2 pairs, both of q1.
    assert pairs.to_dict("records") == [
        {"dataset": "d", "qid": "q1", "lang": "de", "query": "Wer?", "passage": "Er."},
        {"dataset": "d", "qid": "q1", "lang": "en", "query": "Who?", "passage": "He did."},
    ]


# --- real data -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlqa(lareqa_dir) -> DatasetTables:
    return ingest_dataset(lareqa_dir, "mlqa-r", DEFAULT_LANGUAGES)


def test_real_mlqa_r_pairs_and_batches(mlqa):
    pairs = training_pairs(mlqa)
    relevant = mlqa.qrels.merge(mlqa.candidates[["cid", "lang", "text"]], on="cid")
    own_language = mlqa.queries.merge(relevant[["qid", "lang"]].drop_duplicates(), on=["qid", "lang"])
    # one pair per query whose relevant sentence exists in its own language; MLQA-R has one for every query (a
    # data contract): 4199 queries over 7 languages, 1148 questions (the English ones; the others translate subsets)
    assert len(pairs) == len(own_language) == len(mlqa.queries) == 4199
    assert pairs["qid"].nunique() == 1148
    assert set(zip(pairs.qid, pairs.lang, pairs.passage, strict=True)) <= set(
        zip(relevant.qid, relevant.lang, relevant.text, strict=True)
    )

    sampler = BatchSampler(pairs, batch_size=32, mono_share=0.5, seed=0)
    batches = [sampler.batch(step) for step in range(1, 401)]
    texts = texts_of(pairs)
    for batch in batches:
        assert len(set(batch.qids)) == len(set(batch.passages)) == 32
        assert all(
            texts[("mlqa-r", qid, x)][0] == q and texts[("mlqa-r", qid, y)][1] == p
            for qid, q, p, x, y in zip(
                batch.qids, batch.queries, batch.passages, batch.query_langs, batch.passage_langs, strict=True
            )
        )
        pairs_langs = list(zip(batch.query_langs, batch.passage_langs, strict=True))
        if batch.kind == "mono":
            assert len(set(batch.query_langs) | set(batch.passage_langs)) == 1
        else:
            assert all(x != y for x, y in pairs_langs)
    assert within(sum(b.kind == "mono" for b in batches), len(batches), 0.5)
