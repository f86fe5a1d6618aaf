"""Bad input, one case per kind: `hbir validate` exits non-zero with a message naming the file and the field or
expectation with an offending example, shows no traceback, records the run as failed (with the contract outcomes
where the contracts ran) and writes nothing else."""

import json
import shutil
import subprocess
import sys

import duckdb
import pytest

LANGUAGES = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]


@pytest.fixture(scope="module")
def small_xquad(lareqa_dir, tmp_path_factory):
    """The first article of each of the 11 real XQuAD-R files: still fully parallel, validates in a second."""
    folder = tmp_path_factory.mktemp("clean") / "xquad-r"
    folder.mkdir()
    for lang in LANGUAGES:
        data = json.loads((lareqa_dir / "xquad-r" / f"{lang}.json").read_text(encoding="utf-8"))
        data["data"] = data["data"][:1]
        (folder / f"{lang}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return folder


def _edit_de(change):
    """Apply ``change`` to the parsed de.json and write it back."""

    def corrupt(folder):
        data = json.loads((folder / "de.json").read_text(encoding="utf-8"))
        change(data["data"][0]["paragraphs"][0], data)
        (folder / "de.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    return corrupt


def _write_de(transform):
    def corrupt(folder):
        (folder / "de.json").write_bytes(transform((folder / "de.json").read_bytes()))

    return corrupt


def _set_question(value):
    return _edit_de(lambda p, _: p["qas"][0].update(question=value))


# kind -> (corruption, file named in the message, fragments of the message, did the contracts run?)
KINDS = {
    "malformed JSON": (_write_de(lambda raw: b'{"data": [}' + raw), "de.json", ["not valid JSON"], False),
    "truncated JSON": (_write_de(lambda raw: raw[: len(raw) // 2]), "de.json", ["not valid JSON", "EOF"], False),
    "non-UTF-8 bytes": (_write_de(lambda raw: raw.replace(b"Wie", b"W\xffie", 1)), "de.json",
                        ["not UTF-8", "0xff"], False),
    "wrong top-level shape": (_write_de(lambda raw: b"[" + raw + b"]"), "de.json", ["top level", "list"], False),
    "missing field": (_edit_de(lambda p, _: p["qas"][0].pop("question")), "de.json",
                      ["data[0].paragraphs[0].qas[0].question", "missing"], False),
    "null field": (_set_question(None), "de.json", ["data[0].paragraphs[0].qas[0].question", "None"], False),
    "wrong-typed field": (_set_question(42), "de.json", ["data[0].paragraphs[0].qas[0].question", "42"], False),
    "empty text": (_set_question(""), "de.json", ["expect_column_value_lengths_to_be_between(text)", "text=''"], True),
    "invisible text": (_set_question(" \u200b\u00a0\u2060\t"), "de.json",
                       ["expect_column_values_to_be_in_set(text_visible)", "question text has a visible character",
                        "lang='de'"], True),
    "unreadable file": (lambda folder: (folder / "de.json").unlink() or (folder / "de.json").symlink_to("de.json"),
                        "de.json", ["cannot be read", "symbolic links"], False),
    "absurdly long text": (_set_question("x" * 100_000), "de.json",
                           ["expect_column_value_lengths_to_be_between(text)", "text='xxxx"], True),
    "answer outside its paragraph": (
        _edit_de(lambda p, _: p["qas"][0]["answers"][0].update(answer_start=len(p["context"]) + 10)),
        "de.json", ["data[0].paragraphs[0].qas[0].answers[0]", "not in its paragraph"], False),
    "inconsistent sentence breaks": (_edit_de(lambda p, _: p["sentence_breaks"].pop()), "de.json",
                                     ["data[0].paragraphs[0].sentence_breaks", "breaks for"], False),
    "duplicate ids": (_edit_de(lambda p, _: p["qas"].append(dict(p["qas"][0]))),
                      "de.json", ["expect_compound_columns_to_be_unique(dataset,qid,lang)", "lang='de'"], True),
    "broken parallelism": (_edit_de(lambda p, _: p["qas"].pop(0)), "de.json",
                           ["each qid exists in all 11 languages", "lang='de'"], True),
    "file name not a language code": (lambda folder: shutil.copy(folder / "de.json", folder / "deutsch.json"),
                                      "deutsch.json", ["not a known language code", "en.json"], False),
}  # fmt: skip


def _validate(run_hbir, data_dir, db_path):
    return run_hbir(
        "validate", "--set", f"data.dir={data_dir}", "--set", f"db.path={db_path}",
        "--set", "data.train=[]", "--set", "data.eval=[xquad-r]",
    )  # fmt: skip


def _recorded(db_path):
    with duckdb.connect(str(db_path), read_only=True) as connection:
        runs = connection.execute("SELECT status, error FROM runs").fetchall()
        failed = connection.execute("SELECT count(*) FROM validations WHERE NOT success").fetchone()[0]
        versions = connection.execute("SELECT count(*) FROM dataset_versions").fetchone()[0]
    return runs, failed, versions


def test_the_clean_small_dataset_passes(run_hbir, small_xquad, db_path):
    """Positive control: the uncorrupted copy validates, so each failure below is the corruption's doing."""
    result = _validate(run_hbir, small_xquad.parent, db_path)
    assert result.exit_code == 0, result.output
    runs, failed, versions = _recorded(db_path)
    assert runs == [("completed", None)] and failed == 0 and versions == 11


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input_is_refused_and_recorded(kind, run_hbir, small_xquad, tmp_path, db_path):
    corrupt, file_name, fragments, contracts_ran = KINDS[kind]
    shutil.copytree(small_xquad, tmp_path / "xquad-r")
    corrupt(tmp_path / "xquad-r")

    result = _validate(run_hbir, tmp_path, db_path)

    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert file_name in result.output and all(fragment in result.output for fragment in fragments), result.output
    runs, failed, versions = _recorded(db_path)
    assert len(runs) == 1 and runs[0][0] == "failed" and all(fragment in runs[0][1] for fragment in fragments)
    assert (failed > 0) == contracts_ran
    assert versions == 0  # nothing else of the failed run is written
    if kind == "broken parallelism":  # only the file that lacks the question is named, not all 11
        assert "en.json" not in result.output


def test_real_process_exits_nonzero_without_traceback(small_xquad, tmp_path):
    shutil.copytree(small_xquad, tmp_path / "xquad-r")
    KINDS["truncated JSON"][0](tmp_path / "xquad-r")
    done = subprocess.run(
        [sys.executable, "-m", "hbir.cli", "validate", "--set", f"data.dir={tmp_path}",
         "--set", f"db.path={tmp_path / 'r.duckdb'}", "--set", "data.train=[]", "--set", "data.eval=[xquad-r]"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "de.json" in done.stderr and "not valid JSON" in done.stderr and "Traceback" not in done.stderr


def _validate_beir(run_hbir, tmp_path, db_path, corpus_line: str, qrel_lines: str):
    """A one-query BEIR dataset ``mini`` with the given corpus row and qrels, validated through the CLI."""
    folder = tmp_path / "mini"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(corpus_line + "\n")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "Where is Paris?", "lang": "en"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrel_lines)
    return run_hbir("validate", "--set", f"data.dir={tmp_path}", "--set", f"db.path={db_path}",
                    "--set", "data.train=[]", "--set", "data.eval=[mini]")  # fmt: skip


def test_beir_qrel_to_a_missing_candidate(run_hbir, tmp_path, db_path):
    corpus_line = '{"_id": "d1", "text": "Paris is in France.", "lang": "en"}'
    result = _validate_beir(run_hbir, tmp_path, db_path, corpus_line, "q1\td1\t1\nq1\td404\t1\n")
    assert result.exit_code == 1 and "cid_known" in result.output and "cid='d404'" in result.output
    assert "qrels/test.tsv" in result.output
    assert _recorded(db_path)[1:] == (1, 0)


def test_beir_null_lang_in_one_row_names_the_row(run_hbir, tmp_path, db_path):
    corpus_line = '{"_id": "d1", "text": "Paris is in France.", "lang": "en"}\n{"_id": "d2", "text": "Rome."}'
    result = _validate_beir(run_hbir, tmp_path, db_path, corpus_line, "q1\td1\t1\n")
    assert result.exit_code == 1 and "lang is present (not null)" in result.output and "cid='d2'" in result.output
    assert "corpus.jsonl" in result.output and "lang=null" in result.output


def test_beir_missing_lang_field(run_hbir, tmp_path, db_path):
    corpus_line = '{"_id": "d1", "text": "Paris is in France."}'
    result = _validate_beir(run_hbir, tmp_path, db_path, corpus_line, "q1\td1\t1\n")
    assert result.exit_code == 1 and "corpus.jsonl" in result.output and "field 'lang' missing" in result.output
    assert _recorded(db_path) == ([("failed", result.output.split("Error: ", 1)[1].strip())], 0, 0)
