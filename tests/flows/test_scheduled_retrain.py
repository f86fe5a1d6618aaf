"""The scheduled-retrain flow (`hbir retrain`, what the cron deployment starts): retrain only when the training data
or settings changed, record a skipped run otherwise, and promote a model only if it beats the champion."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import THREE_LANGUAGES, db_rows

LANGUAGES = f"data.languages=[{','.join(THREE_LANGUAGES)}]"


@pytest.fixture
def retrain(run_hbir, tmp_path, three_language_data):
    """`hbir retrain --profile smoke` on a copy of three languages' data (so that a test can change it)."""
    data = tmp_path / "data"
    shutil.copytree(three_language_data, data)
    env = {"HBIR_DATA_DIR": str(data), "HBIR_DB": str(tmp_path / "results.duckdb"), "HBIR_OUTPUT_DIR": str(tmp_path)}

    def run(*settings: str):
        result = run_hbir(
            "retrain", "--profile", "smoke", "--set", LANGUAGES, *sum([["--set", s] for s in settings], []), env=env
        )
        assert result.exit_code == 0, result.output[-3000:]
        return result.output

    run.data, run.db = data, tmp_path / "results.duckdb"
    return run


def test_retrains_only_on_change_and_promotes_only_a_better_model(retrain, run_hbir):
    db = retrain.db
    rows = lambda sql, *params: db_rows(db, sql, *params)  # noqa: E731

    # 1. nothing retrained yet: train-eval runs, its model is the first champion
    retrain("train.lr=1e-9")  # a model barely moved from its random start: a weak first champion
    ((first, status),) = rows("SELECT run_id, status FROM runs")
    assert status == "completed"
    ((champion, rival, first_map),) = rows("SELECT champion, rival_run_id, multi_map FROM models")
    assert champion and rival is None
    summary = rows("SELECT value FROM run_summary WHERE run_id = ? AND setting = 'multi' AND metric = 'map'", first)
    assert first_map == pytest.approx(summary[0][0], abs=1e-12)  # the score is the run's own multi mAP

    # 2. same data, same settings: a skipped run that says why, no training, no new model
    output = retrain("train.lr=1e-9")
    (skipped,) = rows("SELECT run_id, kind, note FROM runs WHERE status = 'skipped'")
    assert skipped[1] == "scheduled-retrain" and f"unchanged since run {first}" in skipped[2]
    assert "skipped" in output
    assert rows("SELECT count(*) FROM models") == [(1,)]
    assert rows("SELECT count(DISTINCT run_id) FROM train_steps") == [(1,)]

    # 3. settings changed in a way that leaves the model as it was: retrained, ties the champion, not promoted
    retrain("train.lr=1e-9", "eval.save_indexes=false")
    ((second, promoted, rival, score, rival_score),) = rows(
        "SELECT run_id, champion, rival_run_id, multi_map, rival_multi_map FROM models WHERE run_id != ?", first
    )
    assert not promoted and rival == first
    assert rows("SELECT count(DISTINCT sha256) FROM models") == [(1,)]  # same data, seed and steps: same weights
    assert score == rival_score == first_map  # scored on the same data by the same code
    assert rows("SELECT run_id FROM models WHERE champion") == [(first,)]

    # 4. the training data changed (German removed) and the learning rate is real: a better model, promoted
    for path in retrain.data.glob("mlqa-r/de.json"):
        path.unlink()
    retrain("train.steps=40", "train.batch_size=8")
    ((third, promoted, rival, score, rival_score, promoted_at),) = rows(
        "SELECT run_id, champion, rival_run_id, multi_map, rival_multi_map, promoted_at FROM models "
        "WHERE run_id NOT IN (?, ?)",
        first,
        second,
    )
    assert rival == first and score > rival_score and promoted and promoted_at is not None
    assert rows("SELECT run_id FROM models WHERE champion") == [(third,)]  # one champion
    assert rows("SELECT note FROM runs WHERE run_id = ?", third)[0][0].startswith("champion: beats champion")

    # `hbir runs` shows which model is the champion and why a run was skipped
    listing = run_hbir("runs", env={"HBIR_DB": str(db)}).output
    lines = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert "champion" in lines[third] and "former champion" in lines[first]
    assert "not promoted" in lines[second] and "skipped" in lines[skipped[0]]
