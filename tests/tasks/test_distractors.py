"""`hbir distractors`: XQuAD-R plus N unjudged distractor passages from MLQA-R's paragraphs, as a BEIR folder that
reads back through the BEIR reader (real data, three languages)."""

from __future__ import annotations

import pandas as pd

from tasks.evaluation import order_corpus
from tasks.ingest import ingest_dataset
from tests.helpers import THREE_LANGUAGES


def build(run_hbir, data_dir, out, n, *more):
    return run_hbir(
        "distractors", "--set", f"data.dir={data_dir}", "--set", f"data.languages=[{','.join(THREE_LANGUAGES)}]",
        "--base", "xquad-r", "--source", "mlqa-r", "--n", str(n), "--out", str(out), *more,
    )  # fmt: skip


def same_rows(found: pd.DataFrame, expected: pd.DataFrame, key: list[str]) -> bool:
    def rows(frame):
        return frame.drop(columns="dataset").sort_values(key).reset_index(drop=True).astype(object)

    pd.testing.assert_frame_equal(rows(found), rows(expected))
    return True


def test_with_no_distractors_the_folder_reads_back_as_the_base_dataset(run_hbir, three_language_data, tmp_path):
    result = build(run_hbir, three_language_data, tmp_path / "pool" / "xquad-r-0", 0)
    assert result.exit_code == 0, result.output
    pool = ingest_dataset(tmp_path / "pool", "xquad-r-0", THREE_LANGUAGES)
    base = ingest_dataset(three_language_data, "xquad-r", THREE_LANGUAGES)
    assert same_rows(pool.queries, base.queries, ["qid", "lang"])
    assert same_rows(pool.candidates, base.candidates, ["cid"])
    assert same_rows(pool.qrels, base.qrels, ["qid", "cid"])


def test_distractors_are_unjudged_windows_of_three_sentences_of_one_paragraph(run_hbir, three_language_data, tmp_path):
    result = build(run_hbir, three_language_data, tmp_path / "pool" / "xquad-r-500", 500)
    assert result.exit_code == 0, result.output
    pool = ingest_dataset(tmp_path / "pool", "xquad-r-500", THREE_LANGUAGES)
    base = ingest_dataset(three_language_data, "xquad-r", THREE_LANGUAGES)
    source = ingest_dataset(three_language_data, "mlqa-r", THREE_LANGUAGES).candidates.set_index("cid")
    added = pool.candidates[~pool.candidates["cid"].isin(base.candidates["cid"])]
    assert len(added) == 500 and added["cid"].is_unique
    assert set(added["lang"]) == set(THREE_LANGUAGES)
    assert not pool.qrels["cid"].isin(added["cid"]).any()  # unjudged
    assert same_rows(pool.qrels, base.qrels, ["qid", "cid"])
    for row in added.head(20).itertuples():
        paragraph, first = row.cid.removeprefix("distractor-").rsplit("-", 1)
        sentences = [source.loc[f"{paragraph}-{int(first) + i}", "text"] for i in range(3)]
        assert row.text == " ".join(sentences)


def joins(text: str, sentences: set[str], k: int) -> bool:
    """Whether ``text`` is k sentences of ``sentences`` joined by single spaces."""
    if k == 1:
        return text in sentences
    return any(text.startswith(s + " ") and joins(text[len(s) + 1 :], sentences, k - 1) for s in sentences)


def test_too_many_distractors_or_a_used_folder_is_refused_and_nothing_written(run_hbir, three_language_data, tmp_path):
    too_many = build(run_hbir, three_language_data, tmp_path / "big", 10**7)
    assert too_many.exit_code != 0 and "windows of 3 consecutive sentences: give --n" in too_many.output
    assert not (tmp_path / "big").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    used = build(run_hbir, three_language_data, tmp_path / "used", 10)
    assert used.exit_code != 0 and "has files: give --out a new folder" in used.output
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]


def test_random_draws_give_more_distractors_than_windows_each_of_one_languages_sentences(
    run_hbir, three_language_data, tmp_path
):
    source = ingest_dataset(three_language_data, "mlqa-r", THREE_LANGUAGES).candidates
    n = 3 * len(source)  # far more than the source's windows of three consecutive sentences
    result = build(run_hbir, three_language_data, tmp_path / "pool" / "big", n, "--draw", "random")
    assert result.exit_code == 0, result.output
    pool = ingest_dataset(tmp_path / "pool", "big", THREE_LANGUAGES)
    added = pool.candidates[pool.candidates["cid"].str.startswith("distractor-random-")]
    assert len(added) == n and added["text"].is_unique
    assert not pool.qrels["cid"].isin(added["cid"]).any()  # unjudged
    sentences = {lang: set(group["text"]) for lang, group in source.groupby("lang")}
    for row in added.sample(50, random_state=0).itertuples():
        assert joins(row.text, sentences[row.lang], 3), row.text  # three sentences of the passage's language
    assert order_corpus(pool).in_table_order  # written language by language: evaluated without a copy of its vectors
    shares = added["lang"].value_counts(normalize=True)
    expected = source["lang"].value_counts(normalize=True)
    assert (shares - expected).abs().max() < 0.02  # languages in proportion to their sentences


def test_random_draws_beyond_what_the_sentences_allow_are_refused(run_hbir, three_language_data, tmp_path):
    too_many = build(run_hbir, three_language_data, tmp_path / "huge", 10**6, "--draw", "random", "--window", "1")
    assert too_many.exit_code != 0 and "random distractors asked for" in too_many.output
    assert not (tmp_path / "huge").exists()
