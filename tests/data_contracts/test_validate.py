"""Data contracts on hand-made tables: each rule fails on exactly the rows that break it, and says which."""

import pandas as pd
import pytest

from data_contracts.validate import check_split, validate_datasets
from hbir.core.config import DEFAULT_LANGUAGES
from tasks.ingest import dataset_versions, ingest_dataset
from tasks.tables import DatasetTables, load_tables, save_tables


def _tables(name="toy", queries=None, candidates=None, qrels=None) -> DatasetTables:
    queries = queries or [("q1", "en", "Where is Paris?"), ("q1", "de", "Wo liegt Paris?")]
    candidates = candidates or [
        ("c1", "en", "d1", "Paris is in France."),
        ("c2", "de", "d1", "Paris liegt in Frankreich."),
    ]
    qrels = qrels or [("q1", "c1"), ("q1", "c2")]
    return DatasetTables(
        name=name,
        queries=pd.DataFrame([{"dataset": name, "qid": q, "lang": lang, "text": t} for q, lang, t in queries]),
        candidates=pd.DataFrame(
            [
                {"dataset": name, "cid": c, "lang": lang, "doc_id": d, "text": t, "context": t}
                for c, lang, d, t in candidates
            ]
        ),
        qrels=pd.DataFrame([{"dataset": name, "qid": q, "cid": c} for q, c in qrels]),
        sources={"en": f"{name}/en.json", "de": f"{name}/de.json"},
    )


def _validate(datasets, train=(), fully_parallel=()):
    return validate_datasets(list(datasets), list(train), DEFAULT_LANGUAGES, list(fully_parallel), 100, 100, 1000)


def _failures(results):
    return [(r.dataset, r.table_name, r.expectation.split(":")[0], r.details) for r in results if not r.success]


def test_clean_tables_pass_every_rule():
    results = _validate([_tables()], fully_parallel=["toy"])
    assert results and all(r.success for r in results)


def test_qrel_to_a_missing_candidate_names_the_pair():
    failures = _failures(_validate([_tables(qrels=[("q1", "c1"), ("q1", "c2"), ("q1", "c9")])]))
    assert [(f[1], f[2]) for f in failures] == [("qrels", "expect_column_values_to_be_in_set(cid_known)")]
    assert "qid='q1', cid='c9'" in failures[0][3] and "1 of 3 rows" in failures[0][3]


def test_query_without_a_relevant_candidate_in_its_language():
    # the German question's only relevant candidates are English: it cannot be answered monolingually
    failures = _failures(_validate([_tables(qrels=[("q1", "c1")])]))
    assert [f[2] for f in failures] == ["expect_column_values_to_be_in_set(has_relevant_in_own_lang)"]
    assert "qid='q1', lang='de'" in failures[0][3] and "toy/de.json" in failures[0][3]


def test_language_outside_the_configured_set_names_the_file():
    failures = _failures(_validate([_tables(queries=[("q1", "en", "Where is Paris?"), ("q1", "xx", "Paris?")])]))
    assert ("queries", "expect_column_values_to_be_in_set(lang)") in [(f[1], f[2]) for f in failures]


def test_parallelism_requires_every_qid_in_every_language():
    broken = _tables(
        queries=[("q1", "en", "Where is Paris?"), ("q1", "de", "Wo liegt Paris?"), ("q2", "en", "Where is Rome?")],
        candidates=[
            ("c1", "en", "d1", "Paris is in France."),
            ("c2", "de", "d1", "Paris liegt in Frankreich."),
            ("c3", "en", "d2", "Rome is in Italy."),
        ],
        qrels=[("q1", "c1"), ("q1", "c2"), ("q2", "c3")],
    )
    assert _failures(_validate([broken])) == []  # parallelism is only required where configured
    failures = _failures(_validate([broken], fully_parallel=["toy"]))
    assert [f[2] for f in failures] == ["expect_column_values_to_be_in_set(present)"]
    assert "qid='q2'" in failures[0][3]


def test_evaluation_question_seen_in_training_is_leakage():
    train = _tables("train")
    evaluation = _tables(
        "eval",
        queries=[("e1", "en", "  where IS paris? "), ("e1", "de", "Wo ist Rom?")],
        candidates=[("e1c", "en", "d1", "Paris is the capital."), ("e2c", "de", "d1", "Rom liegt in Italien.")],
        qrels=[("e1", "e1c"), ("e1", "e2c")],
    )
    failures = _failures(_validate([train, evaluation], train=["train"]))
    assert [(f[0], f[1], f[2]) for f in failures] == [
        ("eval", "queries", "expect_column_values_to_be_in_set(text_in_training_data)")
    ]
    assert "qid='e1', lang='en'" in failures[0][3]  # case and spacing do not hide a copy


def test_evaluation_text_seen_as_any_training_text_is_leakage():
    """A training candidate equal to an evaluation question, and a relevant evaluation sentence equal to a training
    one, both behind width, case and zero-width differences."""
    train = _tables("train", candidates=[("c1", "en", "d1", "Wo ist\u200b ROM?"), ("c2", "de", "d1", "Ｒom liegt.")])
    evaluation = _tables(
        "eval",
        queries=[("e1", "en", "Where is Paris now?"), ("e1", "de", "Wo ist Rom?")],
        candidates=[("e1c", "en", "d1", "Paris is the capital."), ("e2c", "de", "d1", "rom  liegt.")],
        qrels=[("e1", "e1c"), ("e1", "e2c")],
    )
    failures = _failures(_validate([train, evaluation], train=["train"]))
    assert [(f[1], f[2]) for f in failures] == [
        ("queries", "expect_column_values_to_be_in_set(text_in_training_data)"),
        ("candidates", "expect_column_values_to_be_in_set(text_in_training_data)"),
    ]
    assert "qid='e1', lang='de'" in failures[0][3] and "cid='e2c', lang='de'" in failures[1][3]


@pytest.mark.parametrize("text", [" ", "\u200b", "\u00a0\u2060", "\t\n", "\u202e"])
def test_text_of_only_invisible_characters_is_empty(text):
    tables = _tables(queries=[("q1", "en", "Where is Paris?"), ("q1", "de", text)])
    failures = _failures(_validate([tables]))
    assert [f[2] for f in failures] == ["expect_column_values_to_be_in_set(text_visible)"]
    assert "qid='q1', lang='de'" in failures[0][3]


def test_real_lareqa_data_meets_every_contract(lareqa_dir):
    datasets = [ingest_dataset(lareqa_dir, name, DEFAULT_LANGUAGES) for name in ("mlqa-r", "xquad-r")]
    results = validate_datasets(datasets, ["mlqa-r"], DEFAULT_LANGUAGES, ["xquad-r"], 2000, 5000, 50000)
    assert _failures(results) == []
    # the dataset-level rules ran: XQuAD-R parallelism and MLQA-R -> XQuAD-R leakage
    assert {r.expectation.split(":")[0] for r in results if r.dataset == "xquad-r"} >= {
        "expect_column_values_to_be_in_set(present)",
        "expect_column_values_to_be_in_set(text_in_training_data)",
    }


@pytest.mark.parametrize("text", ["", "x" * 101])
def test_text_length_bounds(text):
    failures = _failures(_validate([_tables(queries=[("q1", "en", "Where is Paris?"), ("q1", "de", text)])]))
    assert [f[2] for f in failures] == ["expect_column_value_lengths_to_be_between(text)"]


def test_the_dev_split_contract_names_a_question_on_both_sides():
    tables = _tables(
        queries=[("q1", "en", "Where is Paris?"), ("q1", "de", "Wo liegt Paris?"), ("q2", "en", "Where is Rome?")],
        candidates=[("c1", "en", "d1", "Paris is in France."), ("c2", "de", "d1", "Paris liegt in Frankreich."),
                    ("c3", "en", "d2", "Rome is in Italy.")],
        qrels=[("q1", "c1"), ("q1", "c2"), ("q2", "c3")],
    )  # fmt: skip
    train_pairs = pd.DataFrame({"dataset": ["toy"], "qid": ["q2"], "lang": ["en"]})
    assert all(r.success for r in check_split([tables], train_pairs, {"toy": ["q1"]}))
    leaked = pd.DataFrame({"dataset": ["toy", "toy"], "qid": ["q2", "q1"], "lang": ["en", "de"]})  # q1 in training
    (failure,) = [r for r in check_split([tables], leaked, {"toy": ["q1"]}) if not r.success]
    assert (failure.dataset, failure.table_name) == ("toy", "queries")
    assert "on both sides of the dev split" in failure.expectation
    assert "qid='q1'" in failure.details and "toy/en.json" in failure.details and "toy/de.json" in failure.details


def test_candidates_checked_in_batches_count_every_batch_and_find_duplicates_across_them(monkeypatch):
    # one row per batch: a duplicated cid is two batches apart, the too-long texts are in different batches
    monkeypatch.setattr("data_contracts.validate.CANDIDATE_BATCH", 1)
    candidates = [
        ("c1", "en", "d1", "x" * 101),
        ("c2", "de", "d1", "Paris liegt in Frankreich."),
        ("c1", "en", "d2", "y" * 101),
    ]
    failures = _failures(_validate([_tables(candidates=candidates)]))
    by_rule = {f[2]: f[3] for f in failures if f[1] == "candidates"}
    assert "2 of 3 rows" in by_rule["expect_column_value_lengths_to_be_between(text)"]
    assert "cid='c1'" in by_rule["expect_column_values_to_be_unique(cid)"]


def test_tables_read_back_without_texts_validate_as_in_memory(lareqa_dir, tmp_path, monkeypatch):
    # the saved folder's texts are read a batch at a time: the same outcomes as the whole table in memory
    monkeypatch.setattr("data_contracts.validate.CANDIDATE_BATCH", 5000)
    datasets = [ingest_dataset(lareqa_dir, name, DEFAULT_LANGUAGES) for name in ("mlqa-r", "xquad-r")]
    broken = datasets[1].candidates.copy()
    broken.loc[[3, 9000], "text"] = " \u200b "  # invisible, in two different batches
    datasets[1].candidates = broken
    for tables in datasets:
        save_tables(tables, tmp_path / tables.name)
    loaded = [load_tables(tmp_path / tables.name, texts=False) for tables in datasets]
    assert "text" not in loaded[1].candidates
    args = (["mlqa-r"], DEFAULT_LANGUAGES, ["xquad-r"], 2000, 5000, 50000)
    assert validate_datasets(loaded, *args) == validate_datasets(datasets, *args)
    assert [f[3].split(",")[0] for f in _failures(validate_datasets(loaded, *args))] == ["2 of 13014 rows fail"]
    assert dataset_versions(loaded[1]).equals(dataset_versions(datasets[1]))


def test_long_texts_are_checked_in_batches_bounded_by_their_characters(lareqa_dir, tmp_path, monkeypatch):
    """25k rows of documents of 5,000 characters took Great Expectations to 3 GB: a batch is cut by characters."""
    from data_contracts.validate import bounded_batches

    tables = ingest_dataset(lareqa_dir, "xquad-r", DEFAULT_LANGUAGES)
    save_tables(tables, tmp_path / "xquad-r")
    loaded = load_tables(tmp_path / "xquad-r", texts=False)
    monkeypatch.setattr("data_contracts.validate.READ_ROWS", 100)
    monkeypatch.setattr("data_contracts.validate.CANDIDATE_CHARS", 400_000)
    batches = list(bounded_batches(loaded))
    chars = [int(batch["text"].str.len().sum() + batch["context"].str.len().sum()) for batch in batches]
    total = tables.candidates["text"].str.len().sum() + tables.candidates["context"].str.len().sum()
    assert len(batches) >= total // 400_000 and max(chars) <= 400_000
    assert pd.concat(batches).equals(tables.candidates)  # every row once, in table order
    broken = tables.candidates.copy()
    broken.loc[[3, 9000], "text"] = " \u200b "  # invisible, in two different batches
    tables.candidates = broken
    args = (["mlqa-r"], DEFAULT_LANGUAGES, ["xquad-r"], 2000, 5000, 50000)
    failures = [f[3].split(",")[0] for f in _failures(validate_datasets([tables], *args))]
    assert failures == [f"2 of {len(broken)} rows fail"]
