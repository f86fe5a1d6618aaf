"""`hbir study` (the study flow, train-eval subflows tied by a study id, resumable) and `hbir compare` on the smoke
profile with real data: every number of the comparison equals a direct SQL computation on the same rows."""

from __future__ import annotations

import itertools
import json

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from hbir.cli import cli
from tasks.comparison import sign_flip_p_value
from tests.helpers import PROJECT_ROOT, THREE_LANGUAGES, db_rows, run_study

STUDY = f"""
study_id: tiny-study
profile: smoke
settings:
  data.languages: [{", ".join(THREE_LANGUAGES)}]
  eval.save_indexes: false
zero_shot: true
grids:
  - train.strategy: [mono, hybrid]
    train.seed: [0, 1]
"""
RUNS = ["tiny-study-hybrid-s0", "tiny-study-hybrid-s1", "tiny-study-mono-s0", "tiny-study-mono-s1"]
ZERO_SHOT = "tiny-study-zero-shot"


@pytest.fixture(scope="module")
def studied(three_language_data, tmp_path_factory):
    """The tiny study, run once for the module through the real CLI."""
    root = tmp_path_factory.mktemp("study")
    hbir = run_study(root, STUDY, three_language_data, root)
    return hbir, root / "results.duckdb", root / "study.yaml"


def test_the_study_runs_every_grid_point_and_the_zero_shot_baseline(studied):
    _, db, _ = studied
    found = db_rows(
        db, "SELECT run_id, status, strategy, alpha, seed FROM runs WHERE study_id = 'tiny-study' ORDER BY 1"
    )
    assert [row[0] for row in found] == sorted([*RUNS, ZERO_SHOT])
    assert {row[1] for row in found} == {"completed"}
    by_id = {row[0]: row[2:] for row in found}
    assert by_id["tiny-study-mono-s1"] == ("mono", 1.0, 1) and by_id["tiny-study-hybrid-s0"] == ("hybrid", 0.5, 0)
    assert by_id[ZERO_SHOT][:2] == ("zero-shot", None)
    steps = dict(db_rows(db, "SELECT run_id, count(*) FROM train_steps GROUP BY 1"))
    assert steps == {run_id: 4 for run_id in RUNS}  # the zero-shot run trains nothing
    assert db_rows(db, "SELECT count(DISTINCT run_id) FROM metrics") == [(5,)]
    assert db_rows(db, "SELECT count(*) FROM artifacts WHERE kind = 'index'") == [(0,)]  # eval.save_indexes: false


def test_a_study_started_again_skips_what_completed(studied):
    hbir, db, study_file = studied
    listed = hbir("study", "--config", str(study_file), "--dry-run")
    assert listed.exit_code == 0 and listed.output.count("done") == 5 and "to run" not in listed.output
    before = db_rows(db, "SELECT run_id, finished_at FROM runs ORDER BY 1")
    again = hbir("study", "--config", str(study_file))
    assert again.exit_code == 0, again.output[-2000:]
    assert db_rows(db, "SELECT run_id, finished_at FROM runs ORDER BY 1") == before
    changed = hbir("study", "--config", str(study_file), "--set", "train.lr=1e-3", "--dry-run")
    assert changed.exit_code != 0 and "completed with other settings" in changed.output


def test_compare_matches_sql_on_the_same_rows(studied):
    hbir, db, _ = studied
    result = hbir("compare", "--study", "tiny-study", "--format", "json", "--permutations", "2000")
    assert result.exit_code == 0, result.output[-2000:]
    out = json.loads(result.output)
    arms = {(r["dataset"], r["setting"], r["metric"], r["arm"]): r for r in out["arms"]}
    assert {key[3] for key in arms} == {"mono", "hybrid a=0.5", "zero-shot"}
    assert len(arms) == 3 * 6 * 3  # settings x metrics x arms, XQuAD-R
    sql = db_rows(
        db,
        "SELECT dataset, setting, metric, CASE strategy WHEN 'hybrid' THEN 'hybrid a=0.5' ELSE strategy END, "
        "avg(value), stddev_samp(value), count(*) FROM run_summary JOIN runs USING (run_id) "
        "WHERE study_id = 'tiny-study' GROUP BY ALL",
    )
    for dataset, setting, metric, arm, mean, std, n in sql:
        row = arms[(dataset, setting, metric, arm)]
        assert row["mean"] == pytest.approx(mean, abs=1e-12) and row["n_runs"] == n
        assert (row["std"] is None and std is None) or row["std"] == pytest.approx(std, abs=1e-12)

    differences = out["differences"]
    assert len(differences) == 3 * 3  # map only: 3 settings x 3 pairs of arms
    for row in differences:
        expected = arms[(row["dataset"], row["setting"], "map", row["arm"])]["mean"]
        expected -= arms[(row["dataset"], row["setting"], "map", row["other"])]["mean"]
        assert row["difference"] == pytest.approx(expected, abs=1e-12)
        assert 1 / 2001 <= row["p_value"] <= 1 and row["n_queries"] == 3 * 1190

    bias = {(r["arm"], r["query_lang"]): r for r in out["bias"]}
    sql_bias = db_rows(
        db,
        "SELECT strategy, query_lang, avg(rank_distance), avg(same_lang_first_rate) FROM language_bias "
        "JOIN runs USING (run_id) WHERE study_id = 'tiny-study' GROUP BY ALL",
    )
    for strategy, lang, distance, first in sql_bias:
        row = bias[("hybrid a=0.5" if strategy == "hybrid" else strategy, lang)]
        assert row["rank_distance"] == pytest.approx(distance) and row["same_lang_first_rate"] == pytest.approx(first)


def test_compare_lists_of_runs_and_refuses_unknown_ones(studied):
    hbir, _, _ = studied
    table = hbir("compare", "--runs", "tiny-study-mono-s0,tiny-study-hybrid-s0", "--permutations", "200")
    assert table.exit_code == 0 and "## differences" in table.output and "p_value" in table.output
    unknown = hbir("compare", "--runs", "tiny-study-mono-s0,nope")
    assert unknown.exit_code != 0 and "no such run ['nope']" in unknown.output
    assert hbir("compare", "--study", "other").exit_code != 0


def test_the_sign_flip_p_value_matches_exact_enumeration():
    contributions = np.random.default_rng(3).normal(0.05, 0.1, size=12)
    observed = abs(contributions.sum())
    flips = np.array(list(itertools.product([-1.0, 1.0], repeat=12)))
    exact = float(np.mean(np.abs(flips @ contributions) >= observed - 1e-12))
    estimated = sign_flip_p_value(contributions, 200_000, np.random.default_rng(0))
    assert estimated == pytest.approx(exact, abs=0.005)


@pytest.mark.parametrize("name", ["hybrid-vs-pure", "hybrid-vs-pure-converged"])
def test_the_built_in_studies_plan(name, tmp_path):
    """Each study file shipped in hbir/studies is valid: every run of it configures, none ran yet."""
    from hbir.app.study import plan

    study = plan(PROJECT_ROOT / "hbir" / "studies" / f"{name}.yaml", overrides={"db.path": str(tmp_path / "r.duckdb")})
    assert study.study_id == name and study.points and not any(point.done for point in study.points)
    assert {point.config.train.strategy for point in study.points if point.config.train.steps} == {
        "mono", "cross", "hybrid"
    }  # fmt: skip


def test_an_exported_study_imported_elsewhere_is_continued_and_compared_the_same(studied, tmp_path):
    hbir, db, study_file = studied
    exported = hbir("export-study", "--study", "tiny-study", "--out", str(tmp_path / "export"))
    assert exported.exit_code == 0, exported.output
    assert "5 completed runs exported" in exported.output
    other = {"HBIR_DB": str(tmp_path / "other.duckdb")}
    imported = CliRunner().invoke(cli, ["import-study", str(tmp_path / "export")], env=other)
    assert imported.exit_code == 0 and "5 runs imported" in imported.output, imported.output
    listed = CliRunner().invoke(cli, ["study", "--config", str(study_file), "--dry-run"], env=other)
    assert listed.output.count("done") == 5 and "to run" not in listed.output, listed.output
    compare = ["compare", "--study", "tiny-study", "--format", "json", "--permutations", "500", "--bootstrap", "50"]
    here = hbir(*compare)
    there = CliRunner().invoke(cli, compare, env=other)
    assert there.exit_code == 0, there.output[-2000:]
    for table in ("arms", "differences", "bias"):  # the same rows (the order of ties aside)
        assert _keyed(json.loads(there.output)[table]) == _keyed(json.loads(here.output)[table]), table
    again = CliRunner().invoke(cli, ["import-study", str(tmp_path / "export")], env=other)
    assert again.exit_code == 0 and "0 runs imported" in again.output and "5 there already" in again.output


def test_an_export_that_changed_or_clashes_is_refused_and_nothing_is_imported(studied, tmp_path):
    hbir, db, _ = studied
    assert hbir("export-study", "--study", "tiny-study", "--out", str(tmp_path / "export")).exit_code == 0
    target = {"HBIR_DB": str(tmp_path / "target.duckdb")}
    metrics = tmp_path / "export" / "metrics" / "data_0.parquet"
    metrics.write_bytes(metrics.read_bytes()[:-10])
    changed = CliRunner().invoke(cli, ["import-study", str(tmp_path / "export")], env=target)
    assert changed.exit_code != 0 and "metrics/data_0.parquet: changed since it was exported" in changed.output
    assert not (tmp_path / "target.duckdb").exists()
    assert hbir("export-study", "--study", "tiny-study", "--out", str(tmp_path / "export")).exit_code == 0
    clash = hbir("import-study", str(tmp_path / "export"))  # into the database it came from: the same runs
    assert clash.exit_code == 0 and "5 there already" in clash.output
    shift = "UPDATE runs SET finished_at = finished_at + INTERVAL (?) SECOND WHERE run_id = ?"
    with duckdb.connect(str(db)) as connection:  # the run here is now another run than the one exported
        connection.execute(shift, [1, RUNS[0]])
    before = db_rows(db, "SELECT count(*) FROM metrics")
    refused = hbir("import-study", str(tmp_path / "export"))
    assert refused.exit_code != 0 and RUNS[0] in refused.output and "nothing was imported" in refused.output
    assert db_rows(db, "SELECT count(*) FROM metrics") == before
    with duckdb.connect(str(db)) as connection:  # as it was, for the other tests of the module
        connection.execute(shift, [-1, RUNS[0]])
    missing = hbir("import-study", str(tmp_path))
    assert missing.exit_code != 0 and "has no manifest.json" in missing.output


def _keyed(rows: list[dict]) -> dict:
    """Rows by their text fields, numbers rounded past float noise of a different summation order."""
    return {
        tuple(v for v in row.values() if isinstance(v, str)): {
            k: round(v, 12) if isinstance(v, float) else v for k, v in row.items()
        }
        for row in rows
    }
