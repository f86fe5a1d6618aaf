"""`hbir eval` as a user runs it: the smoke model on three languages of the real data, results in DuckDB, a report,
cached embeddings, and a trained run's model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers import THREE_LANGUAGES as LANGUAGES
from tests.helpers import db_rows


@pytest.fixture
def smoke(three_language_data, db_path, tmp_path):
    return [
        "--profile",
        "smoke",
        "--set",
        f"data.dir={three_language_data}",
        "--set",
        f"data.languages=[{','.join(LANGUAGES)}]",
        "--set",
        f"db.path={db_path}",
        "--set",
        f"output.dir={tmp_path / 'runs'}",
    ]


rows = db_rows


def test_eval_fills_metrics_per_query_language_bias_summary_and_a_report(run_hbir, smoke, db_path, tmp_path):
    result = run_hbir("eval", *smoke, "--run-id", "zero")
    assert result.exit_code == 0, result.output
    assert "xquad-r (3 mono, 6 cross, 3 multi)" in result.output
    assert rows(db_path, "SELECT kind, status, strategy, model_source FROM runs") == [
        ("eval", "completed", "zero-shot", "random:tiny")
    ]
    settings = rows(db_path, "SELECT setting, count(DISTINCT (query_lang, corpus_lang)) FROM metrics GROUP BY ALL")
    assert dict(settings) == {"mono": 3, "cross": 6, "multi": 3}
    assert rows(db_path, "SELECT count(DISTINCT metric), min(n_queries), max(n_queries) FROM metrics") == [
        (6, 1190, 1190)
    ]
    # 6 metrics for each of 12 language pairs x 1190 questions, and the rank distance of each multi query
    assert rows(db_path, "SELECT count(*) FROM per_query") == [(12 * 1190 * 6 + 3 * 1190,)]
    # the metrics are the per-query means, and run_summary the mean over language pairs
    assert rows(
        db_path,
        "SELECT count(*) FROM metrics m JOIN (SELECT setting, query_lang, corpus_lang, metric, avg(value) AS mean "
        "FROM per_query GROUP BY ALL) p USING (setting, query_lang, corpus_lang, metric) "
        "WHERE abs(m.value - p.mean) > 1e-9",
    ) == [(0,)]
    summary = dict(rows(db_path, "SELECT setting, value FROM run_summary WHERE metric = 'map'"))
    mono = rows(db_path, "SELECT avg(value) FROM metrics WHERE setting = 'mono' AND metric = 'map'")[0][0]
    assert summary["mono"] == pytest.approx(mono) and set(summary) == {"mono", "cross", "multi"}
    bias = rows(db_path, "SELECT query_lang, n_queries FROM language_bias ORDER BY query_lang")
    assert bias == [(lang, 1190) for lang in LANGUAGES]
    artifacts = rows(db_path, "SELECT kind, path, sha256 FROM artifacts ORDER BY kind, path")
    kinds = [kind for kind, _, _ in artifacts]
    assert kinds.count("index") == 4 and kinds.count("report") == 1 and kinds.count("plot") >= 2
    for _, path, sha256 in artifacts:
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha256
    report = next(Path(path) for kind, path, _ in artifacts if kind == "report")
    assert report.parent == tmp_path / "runs" / "zero" / "report"
    assert "| mono |" in report.read_text()


def test_a_second_eval_reads_its_embeddings_from_the_cache(run_hbir, smoke, db_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HBIR_CACHE_DIR", str(cache))
    assert run_hbir("eval", *smoke, "--run-id", "first").exit_code == 0
    blocks = {path: path.stat().st_mtime_ns for path in (cache / "embeddings").glob("*.npy")}
    assert len(blocks) == 2 * len(LANGUAGES)  # queries and candidates of each XQuAD-R language
    (vectors,) = (cache / "embeddings" / "datasets").iterdir()  # the dataset's vectors, put together from them
    written = (vectors / "candidates.npy").stat().st_mtime_ns
    assert run_hbir("eval", *smoke, "--run-id", "second").exit_code == 0
    assert {path: path.stat().st_mtime_ns for path in (cache / "embeddings").glob("*.npy")} == blocks
    assert (vectors / "candidates.npy").stat().st_mtime_ns == written  # used as it is
    same = "SELECT count(*) FROM metrics a JOIN metrics b USING (dataset, setting, query_lang, corpus_lang, metric) "
    same += "WHERE a.run_id = 'first' AND b.run_id = '{}' AND a.value = b.value"
    assert rows(db_path, same.format("second")) == [(12 * 6,)]
    # with the cache off every text is encoded again and the dataset's vectors written again; the blocks stay
    assert run_hbir("eval", *smoke, "--run-id", "uncached", "--set", "eval.cache_embeddings=false").exit_code == 0
    assert (vectors / "candidates.npy").stat().st_mtime_ns != written
    assert {path: path.stat().st_mtime_ns for path in (cache / "embeddings").glob("*.npy")} == blocks
    assert rows(db_path, same.format("uncached")) == [(12 * 6,)]
    # the paragraph mode encodes other texts: new candidate blocks, the query blocks are reused
    assert run_hbir("eval", *smoke, "--run-id", "paragraph", "--set", "eval.candidates=paragraph").exit_code == 0
    assert len(list((cache / "embeddings").glob("*.npy"))) == len(blocks) + len(LANGUAGES)
    assert not list((cache / "embeddings").glob(".*partial"))


def test_saved_ivf_indexes_searched_memory_mapped_give_the_same_metrics(run_hbir, smoke, db_path, tmp_path):
    ivf = ["--set", "eval.index=IVF8,SQfp16", "--set", "eval.ivf_nprobe=3"]  # 3 of 8 lists: the index's own ranks
    assert run_hbir("eval", *smoke, *ivf, "--run-id", "read").exit_code == 0
    result = run_hbir("eval", *smoke, *ivf, "--set", "eval.index_mmap=true", "--run-id", "mapped")
    assert result.exit_code == 0, result.output
    same = "SELECT count(*) FROM metrics a JOIN metrics b USING (dataset, setting, query_lang, corpus_lang, metric) "
    same += "WHERE a.run_id = 'read' AND b.run_id = 'mapped' AND a.value = b.value"
    assert rows(db_path, same) == [(12 * 6,)]
    refused = run_hbir("eval", *smoke, "--set", "eval.index_mmap=true", "--run-id", "flat")  # flat: nothing to map
    assert refused.exit_code != 0 and "eval.index_mmap searches saved IVF indexes" in refused.output
    assert rows(db_path, "SELECT count(*) FROM runs WHERE run_id = 'flat'") == [(0,)]


def test_eval_of_a_trained_runs_model(run_hbir, smoke, db_path, tmp_path):
    assert run_hbir("train", *smoke, "--run-id", "trained", "--set", "train.strategy=cross").exit_code == 0
    result = run_hbir("eval", *smoke, "--run-id", "after", "--model-run", "trained")
    assert result.exit_code == 0, result.output
    assert rows(db_path, "SELECT model_source, strategy FROM runs WHERE run_id = 'after'") == [("run:trained", "cross")]
    report = tmp_path / "runs" / "after" / "report" / "report.md"
    assert str(tmp_path / "runs" / "trained" / "model") in report.read_text()


def test_eval_of_an_unknown_run_says_so_and_records_nothing(run_hbir, smoke, db_path):
    assert run_hbir("validate", *smoke, "--run-id", "v").exit_code == 0
    result = run_hbir("eval", *smoke, "--model-run", "nope")
    assert result.exit_code == 1
    assert "no run 'nope'" in result.output and "hbir runs" in result.output
    assert rows(db_path, "SELECT run_id FROM runs") == [("v",)]


def test_a_standard_beir_folder_without_lang_validates_and_evaluates(run_hbir, db_path, tmp_path):
    """SciFact's layout (title + text, no lang), its language given by data.default_lang."""
    import json

    folder = tmp_path / "data" / "scifact"
    (folder / "qrels").mkdir(parents=True)
    docs = [
        ("d1", "Bone growth", "Osteoblasts build bone."),
        ("d2", "", "Myelin insulates axons."),
        ("d3", "Vitamin D", "Vitamin D helps calcium uptake."),
        ("d4", "Sleep", "Sleep consolidates memory."),
    ]
    corpus = [{"_id": cid, "title": title, "text": text} for cid, title, text in docs]
    queries = [{"_id": "q1", "text": "What builds bone?"}, {"_id": "q2", "text": "What does sleep do?"}]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td4\t1\n")
    options = [
        "--profile", "smoke", "--set", f"data.dir={tmp_path / 'data'}", "--set", f"db.path={db_path}",
        "--set", f"output.dir={tmp_path / 'runs'}", "--set", "data.train=[]", "--set", "data.eval=[scifact]",
        "--set", "data.default_lang={scifact: en}",
    ]  # fmt: skip
    assert run_hbir("validate", *options).exit_code == 0
    result = run_hbir("eval", *options, "--run-id", "scifact")
    assert result.exit_code == 0, result.output
    assert "scifact (1 mono, 0 cross, 1 multi)" in result.output
    assert rows(db_path, "SELECT setting, n_queries FROM metrics WHERE metric = 'map' ORDER BY setting") == [
        ("mono", 2),
        ("multi", 2),
    ]


def test_an_index_ids_file_is_written_a_batch_of_texts_at_a_time_as_one_table(tmp_path):
    """The ids file beside a saved index (what `hbir search` shows): a language's texts were taken whole into memory
    (60k Hindi documents: 3.0 GB); now a batch at a time, giving the file the whole table would."""
    import pandas as pd
    import pyarrow.parquet as pq

    from hbir.app.stages import concat_parquet, write_ids
    from tasks.tables import TEXT_BATCH, TextList

    n = 2 * TEXT_BATCH + 17
    ids = pd.DataFrame({"cid": [f"c{i}" for i in range(n)], "lang": "de", "doc_id": [f"d{i // 3}" for i in range(n)]})
    ids = ids.astype("str")
    texts = TextList(f"Satz {i} über Warschau" for i in range(n))
    write_ids(ids, texts, tmp_path / "de.ids.parquet")
    ids.assign(text=list(texts)).to_parquet(tmp_path / "whole.parquet", index=False)
    assert pq.ParquetFile(tmp_path / "de.ids.parquet").num_row_groups == 3
    assert pd.read_parquet(tmp_path / "de.ids.parquet").equals(pd.read_parquet(tmp_path / "whole.parquet"))
    concat_parquet([tmp_path / "de.ids.parquet", tmp_path / "whole.parquet"], tmp_path / "all.ids.parquet")
    assert len(pd.read_parquet(tmp_path / "all.ids.parquet")) == 2 * n
    with pytest.raises(ValueError, match="ids"):
        write_ids(ids, TextList(list(texts)[:-1]), tmp_path / "short.parquet")
