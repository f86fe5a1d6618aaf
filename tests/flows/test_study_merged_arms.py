"""A study's merged arm (``train.merge``) whose other settings are another point's: it merges that run's model
instead of training the same model again, and gives what training with ``train.merge`` gives."""

from __future__ import annotations

import shutil

import pytest

from hbir.app import study
from tests.helpers import THREE_LANGUAGES, db_rows, run_study

STUDY = f"""
study_id: merged
profile: smoke
settings:
  data.languages: [{", ".join(THREE_LANGUAGES)}]
  eval.save_indexes: false
zero_shot: false
grids:
  - train.strategy: [hybrid]
    train.merge: [0.5]
  - train.strategy: [hybrid, mono]
"""


@pytest.fixture(scope="module")
def studied(three_language_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("merged-study")
    hbir = run_study(root, STUDY, three_language_data, root / "runs")
    return hbir, root


def test_the_merged_arm_comes_right_after_its_parent_and_merges_its_model(studied):
    _, root = studied
    db = root / "results.duckdb"
    plan = study.plan(root / "study.yaml", overrides={"db.path": str(db)})
    assert [(point.run_id, point.parent) for point in plan.points] == [
        ("merged-hybrid", None), ("merged-hybrid-merged-0.5", "merged-hybrid"), ("merged-mono", None)
    ]  # fmt: skip
    rows = db_rows(db, "SELECT run_id, kind, parent_run_id, merge_weight, strategy FROM runs ORDER BY 1")
    assert rows == [
        ("merged-hybrid", "train-eval", None, None, "hybrid"),
        ("merged-hybrid-merged-0.5", "merge", "merged-hybrid", 0.5, "hybrid"),
        ("merged-mono", "train-eval", None, None, "mono"),
    ]
    assert db_rows(db, "SELECT DISTINCT run_id FROM train_steps ORDER BY 1") == [("merged-hybrid",), ("merged-mono",)]


def test_the_merged_arm_equals_training_with_train_merge(studied, three_language_data):
    hbir, root = studied
    trained = hbir(
        "train", "--profile", "smoke", "--set", f"data.languages=[{','.join(THREE_LANGUAGES)}]",
        "--set", "train.strategy=hybrid", "--set", "train.merge=0.5", "--set", "eval.save_indexes=false",
        "--run-id", "trained-and-merged",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output[-2000:]
    evaluated = hbir("eval", "--profile", "smoke", "--set", f"data.languages=[{','.join(THREE_LANGUAGES)}]",
                     "--model-run", "trained-and-merged", "--run-id", "trained-and-merged-eval")  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output[-2000:]
    values = "SELECT setting, query_lang, corpus_lang, metric, value FROM metrics WHERE run_id = ? ORDER BY ALL"
    db = root / "results.duckdb"
    merged = db_rows(db, values, "merged-hybrid-merged-0.5")
    assert merged and merged == db_rows(db, values, "trained-and-merged-eval")


def test_a_merged_arm_whose_parent_model_is_gone_is_trained(studied):
    _, root = studied
    db = root / "results.duckdb"
    plan = study.plan(root / "study.yaml", overrides={"db.path": str(db)})
    point = next(point for point in plan.points if point.parent)
    assert study.parent_model(point.config, point) == "merged-hybrid"
    shutil.rmtree(root / "runs" / "merged-hybrid" / "model")  # another machine, or a cleaned run folder
    assert study.parent_model(point.config, point) is None
