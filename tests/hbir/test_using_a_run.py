"""Using a run's model where people already work, after one smoke `hbir run`: the model folder in
sentence-transformers (its prompts and its model card), its rankings read by ir_measures and ranx, and a typed
question searched."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from hbir.cli import cli
from hbir.core.config import load_config
from models.encoder import BiEncoder
from tests.helpers import THREE_LANGUAGES, db_rows

TEXTS = ["Wo liegt Paris?", "Paris liegt an der Seine.", "巴黎在哪里？"]
METRICS = {"map": "AP", "mrr@10": "RR@10", "ndcg@10": "nDCG@10", "recall@100": "R@100"}  # hbir: ir_measures


@pytest.fixture(scope="module")
def run(three_language_data, tmp_path_factory):
    """A smoke train-eval run named ``used``: {hbir(*args), db, runs, config}."""
    root = tmp_path_factory.mktemp("used")
    options = [
        "--profile", "smoke",
        "--set", f"data.dir={three_language_data}",
        "--set", f"data.languages=[{','.join(THREE_LANGUAGES)}]",
        "--set", f"db.path={root / 'results.duckdb'}",
        "--set", f"output.dir={root / 'runs'}",
    ]  # fmt: skip

    def hbir(*args: str):
        return CliRunner().invoke(cli, [*args, *options], catch_exceptions=True)

    result = hbir("run", "--run-id", "used")
    assert result.exit_code == 0, result.output[-3000:]
    config = load_config("smoke", overrides=list(options[3::2]))
    return {"hbir": hbir, "db": root / "results.duckdb", "runs": root / "runs", "config": config}


# -- the model folder ------------------------------------------------------------------------------------------------


def test_encode_query_and_encode_document_equal_hbirs_embeddings(run):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model_dir = run["runs"] / "used" / "model"
    ours = BiEncoder.from_config(model_dir, run["config"].model)
    theirs = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    torch.testing.assert_close(theirs.encode_query(TEXTS, convert_to_tensor=True), ours.embed(TEXTS, "query"))
    documents = theirs.encode_document(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(documents, ours.embed(TEXTS, "passage"))
    assert not torch.allclose(documents, ours.embed(TEXTS, "query"))  # the prefix is really applied


def test_the_model_card_describes_the_run_and_its_results(run):
    card = (run["runs"] / "used" / "model" / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "sentence-transformers" and front["language"] == sorted(THREE_LANGUAGES)
    assert front["base_model"] == "tiny" and front["datasets"] == ["mlqa-r"]
    assert "# used" in card and "- steps x batch size: 4 x 4" in card and "encode_document" in card
    table = card.split("## Evaluation: xquad-r", 1)[1]
    assert "| setting | map |" in table and all(f"| {setting} |" in table for setting in ("mono", "cross", "multi"))
    ((mono_map,),) = db_rows(run["db"], "SELECT value FROM run_summary WHERE setting = 'mono' AND metric = 'map'")
    assert f"| mono | {mono_map:.3f} |" in table


# -- export ----------------------------------------------------------------------------------------------------------


def _hbir_per_query(run, setting: str) -> pd.DataFrame:
    """hbir's per-query values of the setting: index (query_id as exported, metric), column value."""
    rows = db_rows(
        run["db"],
        "SELECT qid, query_lang, corpus_lang, metric, value FROM per_query WHERE setting = ? AND metric IN ?",
        setting, list(METRICS),
    )  # fmt: skip
    frame = pd.DataFrame(rows, columns=["qid", "query_lang", "corpus_lang", "metric", "value"])
    cross = frame["corpus_lang"] if setting == "cross" else None
    frame["query_id"] = frame["qid"] + "-" + frame["query_lang"] + ("-" + cross if cross is not None else "")
    return frame.set_index(["query_id", "metric"])[["value"]]


def _tied(run_file, qrels_file) -> set[str]:
    """Queries where a relevant candidate's score equals another candidate's: ranks that hbir (pessimistic) and
    trec_eval (by document id) break differently."""
    ranked = pd.read_csv(run_file, sep=" ", names=["q", "_", "doc", "rank", "score", "tag"], dtype={"score": str})
    qrels = pd.read_csv(qrels_file, sep=" ", names=["q", "_", "doc", "rel"])
    relevant = ranked.merge(qrels[["q", "doc"]], on=["q", "doc"])[["q", "score"]].drop_duplicates()
    counts = ranked.groupby(["q", "score"]).size().rename("n").reset_index()
    return set(relevant.merge(counts, on=["q", "score"]).query("n > 1")["q"])


@pytest.mark.parametrize("setting", ["mono", "cross", "multi"])
def test_exported_trec_read_by_ir_measures_gives_hbirs_metrics(run, setting, tmp_path):
    ir_measures = pytest.importorskip("ir_measures")
    depth = "4000"  # the whole pool of three languages (3 x ~1,200 sentences): mAP over every relevant candidate
    result = run["hbir"]("export", "--run", "used", "--setting", setting, "--depth", depth, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    run_file, qrels_file = tmp_path / f"xquad-r-{setting}.run.trec", tmp_path / f"xquad-r-{setting}.qrels.trec"
    assert str(run_file) in result.output and str(qrels_file) in result.output
    first = run_file.read_text().split("\n", 1)[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "used"

    measures = {ir_measures.parse_measure(name): name for name in METRICS.values()}
    values = ir_measures.iter_calc(
        list(measures),
        list(ir_measures.read_trec_qrels(str(qrels_file))),
        list(ir_measures.read_trec_run(str(run_file))),
    )
    hbir_name = {theirs: ours for ours, theirs in METRICS.items()}
    theirs = pd.DataFrame(
        [(m.query_id, hbir_name[measures[m.measure]], m.value) for m in values], columns=["query_id", "metric", "value"]
    ).set_index(["query_id", "metric"])
    ours = _hbir_per_query(run, setting)
    assert sorted(theirs.index) == sorted(ours.index)  # the same queries, each in the same corpora
    tied = _tied(run_file, qrels_file)  # the random tiny model maps many rare characters alike
    untied = [key for key in ours.index if key[0] not in tied]
    assert len(untied) > 0.8 * len(ours)
    np.testing.assert_allclose(theirs.loc[untied, "value"], ours.loc[untied, "value"], rtol=0, atol=1e-9)


def test_exported_ranx_files_give_hbirs_metrics(run, tmp_path):
    ranx = pytest.importorskip("ranx")
    result = run["hbir"]("export", "--run", "used", "--setting", "mono", "--depth", "4000", "--format", "ranx",
                         "--out", str(tmp_path))  # fmt: skip
    assert result.exit_code == 0, result.output
    run_dict = json.loads((tmp_path / "xquad-r-mono.run.json").read_text())
    qrels_dict = json.loads((tmp_path / "xquad-r-mono.qrels.json").read_text())
    scores = ranx.evaluate(ranx.Qrels(qrels_dict), ranx.Run(run_dict), ["map", "mrr@10", "ndcg@10", "recall@100"])
    ours = _hbir_per_query(run, "mono")["value"].groupby(level="metric").mean()  # ranx: the mean over queries
    tied = _tied_ranx(run_dict, qrels_dict)
    assert len(tied) < 0.2 * len(run_dict)
    for name in METRICS:  # ties move a few queries' values a little: the means agree to 1e-3, exactly without ties
        assert scores[name] == pytest.approx(ours[name], abs=1e-3 if tied else 1e-9), name


def _tied_ranx(run_dict: dict, qrels_dict: dict) -> set[str]:
    return {
        query
        for query, scores in run_dict.items()
        if any(list(scores.values()).count(scores[doc]) > 1 for doc in qrels_dict.get(query, {}) if doc in scores)
    }


def test_export_of_an_unknown_run_names_it(run):
    result = run["hbir"]("export", "--run", "nope", "--setting", "mono")
    assert result.exit_code == 1 and "no run 'nope'" in result.output and "Traceback" not in result.output


# -- search ----------------------------------------------------------------------------------------------------------


def test_search_answers_a_question_with_hits_from_the_saved_index(run):
    assert (run["runs"] / "used" / "indexes" / "xquad-r" / "flat-all.ids.parquet").is_file()
    result = run["hbir"]("search", "--model-run", "used", "How many people live in Warsaw?", "--k", "5")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "lang", "cid", "text"] and len(lines) == 1 + 5 + 1
    assert lines[-1].startswith("languages of the 5 hits: ")
    as_json = json.loads(run["hbir"]("search", "--model-run", "used", "Warsaw?", "--format", "json").stdout)
    assert len(as_json["hits"]) == 10 and sum(as_json["languages"].values()) == 10
    assert [hit["rank"] for hit in as_json["hits"]] == list(range(1, 11))
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(as_json["hits"]))


def test_search_in_one_language_and_for_a_training_run_without_an_index(run):
    german = json.loads(
        run["hbir"]("search", "--model-run", "used", "Warsaw?", "--lang", "de", "--format", "json").stdout
    )
    assert {hit["lang"] for hit in german["hits"]} == {"de"}
    assert run["hbir"]("train", "--run-id", "trained-only").exit_code == 0
    result = run["hbir"]("search", "--model-run", "trained-only", "Warsaw?", "--dataset", "xquad-r", "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["hits"]) == 10


def test_mteb_says_what_it_needs_when_it_cannot_run(run):
    """Offline, MTEB (installed or not) cannot fetch its tasks' data: a message saying what is missing, exit 1."""
    result = run["hbir"]("mteb", "--model-run", "used", "--tasks", "SciFact")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "MTEB is not installed" in result.output or "Hugging Face cache" in result.output
