"""Ingestion into the canonical tables: real LAReQA counts, BEIR folders, the Hugging Face datasets path."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from hbir.core.config import DEFAULT_LANGUAGES
from hbir.core.errors import DataError
from tasks.beir import json_blocks
from tasks.ingest import dataset_versions, ingest_dataset, ingest_to_folder, json_rows
from tasks.tables import load_tables, save_tables
from tests.helpers import PROJECT_ROOT

# LAReQA's table (github.com/google-research-datasets/lareqa): candidates per language in XQuAD-R.
XQUAD_R_CANDIDATES = {
    "ar": 1222,
    "de": 1276,
    "el": 1234,
    "en": 1180,
    "es": 1215,
    "hi": 1244,
    "ru": 1219,
    "th": 852,
    "tr": 1167,
    "vi": 1209,
    "zh": 1196,
}


@pytest.fixture(scope="module")
def xquad(lareqa_dir):
    return ingest_dataset(lareqa_dir, "xquad-r", DEFAULT_LANGUAGES)


@pytest.fixture(scope="module")
def mlqa(lareqa_dir):
    return ingest_dataset(lareqa_dir, "mlqa-r", DEFAULT_LANGUAGES)


def test_xquad_r_counts_equal_lareqa_table(xquad):
    assert xquad.queries.groupby("lang").size().to_dict() == dict.fromkeys(XQUAD_R_CANDIDATES, 1190)
    assert xquad.candidates.groupby("lang").size().to_dict() == XQUAD_R_CANDIDATES


def test_xquad_r_question_has_one_relevant_sentence_per_language(xquad):
    relevant_langs = xquad.qrels.merge(xquad.candidates[["cid", "lang"]], on="cid").groupby("qid")["lang"]
    assert relevant_langs.nunique().eq(11).all() and relevant_langs.size().eq(11).all()
    assert xquad.qrels["qid"].nunique() == 1190


def test_answer_sentence_is_the_one_holding_the_answer(xquad):
    # en.json, first paragraph: the question about points is answered by "... gave up just 308 points ..."
    qid = xquad.queries.query("lang == 'en' and text == 'How many points did the Panthers defense surrender?'")["qid"]
    cids = xquad.qrels[xquad.qrels["qid"] == qid.item()]["cid"]
    english = xquad.candidates[xquad.candidates["cid"].isin(cids) & (xquad.candidates["lang"] == "en")]
    assert english["text"].item().startswith("The Panthers defense gave up just 308 points")
    assert english["context"].item().startswith(english["text"].item())


def test_translated_paragraphs_share_a_doc_id(xquad):
    # XQuAD-R: 240 paragraphs, each translated into all 11 languages
    per_doc = xquad.candidates.groupby("doc_id")["lang"].nunique()
    assert len(per_doc) == 240 and per_doc.eq(11).all()


def test_mlqa_r_counts(mlqa):
    queries = mlqa.queries.groupby("lang").size()
    candidates = mlqa.candidates.groupby("lang").size()
    assert (queries["en"], candidates["en"]) == (1148, 6264)
    assert (queries["es"], candidates["es"]) == (500, 1787)
    # MLQA-R questions exist in 2 to 4 languages, each with its relevant sentence
    assert set(mlqa.qrels.groupby("qid").size()) == {2, 3, 4}


def test_fingerprints_follow_content_not_runs(lareqa_dir, tmp_path, xquad):
    versions = dataset_versions(xquad)
    assert versions.set_index("lang")["n_candidates"].to_dict() == XQUAD_R_CANDIDATES
    assert versions.set_index("lang")["n_qrels"].eq(1190).all()
    assert versions.equals(dataset_versions(ingest_dataset(lareqa_dir, "xquad-r", DEFAULT_LANGUAGES)))

    copy = tmp_path / "xquad-r"
    shutil.copytree(lareqa_dir / "xquad-r", copy)
    data = json.loads((copy / "de.json").read_text(encoding="utf-8"))
    data["data"][0]["paragraphs"][0]["qas"][0]["question"] += " (geändert)"
    (copy / "de.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    changed = dataset_versions(ingest_dataset(tmp_path, "xquad-r", DEFAULT_LANGUAGES)).set_index("lang")
    before = versions.set_index("lang")["fingerprint"]
    assert changed.loc["de", "fingerprint"] != before["de"]
    assert changed.drop(index="de")["fingerprint"].equals(before.drop(index="de"))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


CORPUS = [
    {"_id": "d1-en", "doc_id": "d1", "text": "Paris is the capital of France.", "lang": "en"},
    {"_id": "d1-de", "doc_id": "d1", "text": "Paris ist die Hauptstadt Frankreichs.", "lang": "de"},
    {"_id": "d2-en", "doc_id": "d2", "text": "Berlin is in Germany.", "lang": "en"},
]
QUERIES = [
    {"_id": "q1", "text": "What is the capital of France?", "lang": "en"},
    {"_id": "q1", "text": "Was ist die Hauptstadt Frankreichs?", "lang": "de"},
]


def test_beir_folder_with_language_field(tmp_path):
    folder = tmp_path / "mini"
    (folder / "qrels").mkdir(parents=True)
    _write_jsonl(folder / "corpus.jsonl", CORPUS)
    _write_jsonl(folder / "queries.jsonl", QUERIES)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1-en\t1\nq1\td1-de\t1\nq1\td2-en\t0\n")
    tables = ingest_dataset(tmp_path, "mini", DEFAULT_LANGUAGES)
    assert tables.queries[["qid", "lang"]].values.tolist() == [["q1", "en"], ["q1", "de"]]
    assert tables.candidates.set_index("cid")["doc_id"].to_dict() == {"d1-en": "d1", "d1-de": "d1", "d2-en": "d2"}
    assert tables.candidates["context"].tolist() == tables.candidates["text"].tolist()
    # score 0 is "not relevant" in BEIR, so only two judgements remain
    assert tables.qrels[["qid", "cid"]].values.tolist() == [["q1", "d1-en"], ["q1", "d1-de"]]


def test_a_standard_beir_folder_takes_its_language_from_the_config_and_joins_titles(tmp_path):
    """SciFact's layout: no lang field, a title on each document, qrels with a header."""
    folder = tmp_path / "scifact"
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": "4983", "title": "Microstructural development", "text": "Alterations of the architecture."},
              {"_id": "5836", "title": "", "text": "Induction of myelodysplasia."}]  # fmt: skip
    _write_jsonl(folder / "corpus.jsonl", corpus)
    _write_jsonl(
        folder / "queries.jsonl", [{"_id": "1", "text": "0-dimensional biomaterials show inductive properties."}]
    )
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t4983\t1\n")
    with pytest.raises(DataError, match=r"field 'lang' missing .*data.default_lang=\{scifact: en\}"):
        ingest_dataset(tmp_path, "scifact", DEFAULT_LANGUAGES)

    tables = ingest_dataset(tmp_path, "scifact", DEFAULT_LANGUAGES, default_lang="en")
    assert set(tables.queries["lang"]) == set(tables.candidates["lang"]) == {"en"}
    assert tables.candidates["text"].tolist() == [
        "Microstructural development Alterations of the architecture.",
        "Induction of myelodysplasia.",
    ]


def test_a_corpus_is_read_in_blocks_of_whole_lines_with_the_first_blocks_columns(tmp_path, monkeypatch):
    """Blocks of a few lines: the same rows as one block, a line longer than a block kept whole, blank lines
    skipped; a field or a type the first block did not have is an error naming the file, as pyarrow's streaming
    reader has it."""
    folder = tmp_path / "pool"
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": f"d{i}", "text": f"passage {i} " + "long " * (500 if i == 7 else 1), "lang": "en"} for i in range(30)
    ]
    lines = [json.dumps(row) for row in corpus]
    (folder / "corpus.jsonl").write_text("\n".join(lines[:10] + ["", "  "] + lines[10:]) + "\n\n", encoding="utf-8")
    _write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "Which passage?", "lang": "en"}])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td7\t1\n")
    whole = ingest_dataset(tmp_path, "pool", ["en"]).candidates

    monkeypatch.setattr("tasks.beir.CORPUS_BLOCK_BYTES", 200)  # about 3 lines; line 7 is 2.5 KB
    blocks = list(json_blocks(folder / "corpus.jsonl", 200))
    assert len(blocks) > 8 and max(len(block) for block in blocks) < 6
    save = tmp_path / "saved"
    ingest_to_folder(tmp_path, "pool", ["en"], save)
    assert load_tables(save).candidates.equals(whole)
    assert whole["cid"].tolist() == [row["_id"] for row in corpus]
    assert whole["text"].tolist() == [row["text"] for row in corpus]

    for bad, message in [({"title": "new"}, "unexpected field"), ({"text": 5}, "changed from string to number")]:
        (folder / "corpus.jsonl").write_text("\n".join(lines + [json.dumps({**corpus[0], **bad})]), encoding="utf-8")
        with pytest.raises(DataError, match=f"corpus.jsonl.*{message}"):
            ingest_to_folder(tmp_path, "pool", ["en"], tmp_path / "failed")
        assert not (tmp_path / "failed").exists()


def test_hub_dataset_path_on_a_local_dataset_repo(tmp_path):
    """The hf:<name> reader goes through datasets.load_dataset(name, config), here on a local repo layout."""
    repo = tmp_path / "org-mini"
    repo.mkdir()
    _write_jsonl(repo / "corpus.jsonl", CORPUS)
    _write_jsonl(repo / "queries.jsonl", QUERIES)
    _write_jsonl(
        repo / "qrels.jsonl",
        [{"query-id": "q1", "corpus-id": "d1-en", "score": 1}, {"query-id": "q1", "corpus-id": "d1-de", "score": 1}],
    )
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(f"- config_name: {name}\n  data_files: {name}.jsonl\n" for name in ("corpus", "queries", "qrels"))
        + "---\n"
    )
    tables = ingest_dataset(tmp_path / "unused", f"hf:{repo}", DEFAULT_LANGUAGES)
    assert tables.name == f"hf:{repo}"
    assert len(tables.queries) == 2 and len(tables.candidates) == 3
    assert sorted(tables.qrels["cid"]) == ["d1-de", "d1-en"]


def test_fingerprints_serialise_a_table_in_parts_as_the_whole_table(xquad, tmp_path, monkeypatch):
    candidates = xquad.candidates.sort_values("cid")
    whole = candidates.to_json(orient="values", force_ascii=False).encode("utf-8")
    parts = [candidates.iloc[:1000], candidates.iloc[1000:1000], candidates.iloc[1000:]]  # an empty part among them
    assert b"".join(json_rows(parts)) == whole
    assert b"".join(json_rows([])) == b"[]" == candidates.iloc[:0].to_json(orient="values").encode()
    # a table loaded without its texts: sorted by DuckDB from the Parquet file, a range of 300 ids at a time, read
    # a few rows at a time: same bytes
    monkeypatch.setattr("tasks.ingest.FINGERPRINT_BATCH", 500)
    monkeypatch.setattr("tasks.tables.SORT_ROWS", 300)
    save_tables(xquad, tmp_path / "xquad-r")
    loaded = load_tables(tmp_path / "xquad-r", texts=False)
    assert "text" not in loaded.candidates
    german = xquad.candidates[xquad.candidates["lang"] == "de"].sort_values("cid")
    batches = list(loaded.candidates_by_id("de", 200))
    assert [len(batch) for batch in batches] == [200, 100] * (len(german) // 300) + [len(german) % 300]
    assert b"".join(json_rows(batches)) == german.to_json(orient="values", force_ascii=False).encode("utf-8")
    assert dataset_versions(loaded).equals(dataset_versions(xquad))


def test_long_texts_are_sorted_in_ranges_of_at_most_sort_bytes(xquad, tmp_path, monkeypatch):
    """A range of SORT_ROWS documents of 20 KB each ran DuckDB out of its memory: a range is cut by bytes too."""
    import duckdb
    import pandas as pd

    from tasks.tables import _id_ranges

    monkeypatch.setattr("tasks.tables.SORT_BYTES", 50_000)
    save_tables(xquad, tmp_path / "xquad-r")
    path = str(tmp_path / "xquad-r" / "candidates.parquet")
    german = xquad.candidates[xquad.candidates["lang"] == "de"].sort_values("cid")
    sizes = german["text"].str.encode("utf-8").str.len() + german["context"].str.encode("utf-8").str.len()
    with duckdb.connect() as con:
        ranges = list(_id_ranges(con, path, "de"))
        query = "SELECT cid FROM read_parquet(?) WHERE lang = 'de' AND {} ORDER BY cid"
        parts = [con.execute(query.format(where), [path, *bounds]).fetchall() for where, bounds in ranges]
    assert sizes.sum() // 50_000 <= len(ranges) - 1 <= sizes.sum() // 50_000 + 1
    assert [cid for part in parts for (cid,) in part] == german["cid"].tolist()  # each row once, in order
    in_range = sizes.groupby(german["cid"].map({cid: n for n, part in enumerate(parts) for (cid,) in part}))
    assert (in_range.sum() - in_range.last() < 50_000).all()  # within the bytes, but for the row that crossed them
    batches = list(load_tables(tmp_path / "xquad-r", texts=False).candidates_by_id("de", 200))
    assert pd.concat(batches).reset_index(drop=True).equals(german.reset_index(drop=True))


def test_a_parquet_file_is_read_in_batches_across_its_row_groups_in_order(xquad, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.tables import parquet_batches

    table = pa.table({"n": list(range(15)), "s": [f"row {i}" for i in range(15)]})
    with pq.ParquetWriter(tmp_path / "t.parquet", table.schema) as writer:
        for start, stop in [(0, 5), (5, 12), (12, 15)]:  # row groups of 5, 7 and 3 rows
            writer.write_table(table.slice(start, stop - start))
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == 3
    batches = list(parquet_batches(tmp_path / "t.parquet", ["s", "n"], 4))
    assert [batch.num_rows for batch in batches] == [4, 4, 4, 3]
    assert pa.concat_tables(batches).to_pydict() == table.select(["s", "n"]).to_pydict()
    # a language's texts read a batch at a time from a table saved in several row groups, in table order
    candidates = xquad.candidates
    parts = [candidates.iloc[start : start + 3000] for start in range(3000, len(candidates), 3000)]
    save_tables(xquad.__class__(**{**xquad.__dict__, "candidates": candidates.iloc[:3000]}), tmp_path / "x", parts)
    loaded = load_tables(tmp_path / "x", texts=False)
    for lang in ("ar", "zh"):
        assert loaded.candidate_texts("text", lang) == candidates.loc[candidates["lang"] == lang, "text"].tolist()
    assert loaded.candidate_texts("context") == candidates["context"].tolist()


def test_a_languages_texts_are_read_from_its_own_row_groups_at_any_rows(xquad, tmp_path, monkeypatch):
    import numpy as np
    import pyarrow.parquet as pq

    from tasks import tables as tables_module

    # saved language by language in parts of 1,000 rows (row groups), the way a distractor pool is written
    candidates = xquad.candidates.sort_values("lang", kind="stable").reset_index(drop=True)
    parts = [candidates.iloc[start : start + 1000] for start in range(1000, len(candidates), 1000)]
    save_tables(xquad.__class__(**{**xquad.__dict__, "candidates": candidates.iloc[:1000]}), tmp_path / "x", parts)
    loaded = load_tables(tmp_path / "x", texts=False)
    read_groups = []
    real_read = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, group, **kw: read_groups.append(group) or real_read(self, group, **kw),
    )
    monkeypatch.setattr(tables_module, "TEXT_BATCH", 700)  # batches that cut across row groups
    greek = candidates.loc[candidates["lang"] == "el", "text"].tolist()
    column = loaded.text_column("text", "el")
    assert len(column) == len(greek) and column.read() == greek
    holding = {i // 1000 for i in np.flatnonzero((candidates["lang"] == "el").to_numpy())}
    assert set(read_groups) == holding  # the other languages' row groups are not read
    rows = np.random.default_rng(0).permutation(len(greek))[:300]
    shard = column.subset(rows)
    assert len(shard) == 300 and shard.read() == [greek[i] for i in rows]
    assert shard.subset(np.arange(299, -1, -1)).read() == [greek[i] for i in rows[::-1]]
    assert [text for batch in shard.batches(7) for text in batch] == [greek[i] for i in rows]
    # cut as they are read: what an encoder can keep of them (TextEncoder.char_limits)
    assert column.read(max_chars=20) == [text[:20] for text in greek]
    assert shard.read(max_chars=20) == [greek[i][:20] for i in rows]


def test_arrow_memory_is_given_back_as_freed_unless_the_user_names_a_pool():
    import pyarrow as pa

    def pool(environ: dict) -> str:
        code = "import pyarrow as pa, tasks.tables; print(pa.default_memory_pool().backend_name)"
        command = [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=PROJECT_ROOT, env=environ, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    environ = {key: value for key, value in os.environ.items() if key != "ARROW_DEFAULT_MEMORY_POOL"}
    try:
        pa.jemalloc_memory_pool()
        expected = "jemalloc"
    except NotImplementedError:  # a pyarrow built without it keeps its default
        expected = pa.default_memory_pool().backend_name
    assert pool(environ) == expected
    assert pool({**environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}) == "system"
