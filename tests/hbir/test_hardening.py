"""Hardening, case by case through the CLI: what a mistaken or hostile input does (exit code, a message naming the
thing, no traceback) and what the results database and the output folder hold afterwards.

Run ids that would escape output.dir, queries that do not stop, runs left running by a killed process or started
twice, databases that are not hbir's, text that is not there, numbers that are not numbers, settings files that are
not settings, checkpoints nobody needs and checkpoints hbir did not write.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from hbir.core.config import load_config
from hbir.core.errors import ConfigError
from hbir.core.paths import run_dir
from hbir.store.runs import RunRecord, start_run
from hbir.store.schema import MIGRATIONS, SCHEMA_VERSION
from tests.helpers import THREE_LANGUAGES, db_rows


@pytest.fixture
def paths(tmp_path):
    return {"db": tmp_path / "results.duckdb", "runs": tmp_path / "runs"}


@pytest.fixture
def smoke(three_language_data, paths):
    return [
        "--profile", "smoke",
        "--set", f"data.dir={three_language_data}",
        "--set", f"data.languages=[{','.join(THREE_LANGUAGES)}]",
        "--set", f"db.path={paths['db']}",
        "--set", f"output.dir={paths['runs']}",
    ]  # fmt: skip


def _clean_error(result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert all(fragment in result.output for fragment in fragments), result.output


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hbir.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


# -- run ids -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_id", ["../../../tmp/x", "a/b c", "x" * 300, "line\nbreak", "bidi\u202eevil", ".hidden", ""]
)
def test_a_run_id_that_is_not_a_name_is_refused_before_anything_starts(run_hbir, smoke, paths, run_id):
    result = run_hbir("train", *smoke, "--run-id", run_id)
    _clean_error(result, 2, "--run-id", "letters, digits")
    assert not paths["db"].exists() and not paths["runs"].exists()  # nothing recorded, nothing written


def test_the_flows_and_paths_check_run_ids_too(tmp_path):
    """What the CLI checks, the functions the Prefect flows call check again: a flow parameter is no path."""
    from hbir.app import records

    config = load_config("smoke", overrides={"db.path": str(tmp_path / "r.duckdb"), "output.dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="not allowed"):
        records.start(config, "../escape")
    with pytest.raises(ConfigError, match="not allowed"):
        run_dir(tmp_path, "../escape")
    (tmp_path / "linked").symlink_to("/tmp")
    with pytest.raises(ConfigError, match="leads out of output.dir"):
        run_dir(tmp_path, "linked")
    assert not (tmp_path / "r.duckdb").exists()


def test_runs_shows_control_characters_of_old_run_ids_as_escapes(run_hbir, paths):
    record = RunRecord("old\nforged-line\u202e", "validate", {})  # recorded by an hbir that did not check ids
    start_run(str(paths["db"]), record)
    result = run_hbir("runs", "--set", f"db.path={paths['db']}")
    assert result.exit_code == 0, result.output
    assert "old\\u000aforged-line\\u202e" in result.output and "\u202e" not in result.output
    assert "forged-line" not in result.output.splitlines()[2:]  # no line of its own


# -- hbir query ----------------------------------------------------------------------------------------------------

ENDLESS = "SELECT count(*) FROM range(1000000000) a, range(1000000000) b"


@pytest.fixture
def recorded_db(paths):
    start_run(str(paths["db"]), RunRecord("first", "validate", {}))
    return paths["db"]


def test_a_query_past_its_timeout_is_stopped(run_hbir, recorded_db):
    started = time.monotonic()
    result = run_hbir("query", "--set", f"db.path={recorded_db}", "--timeout", "1", ENDLESS)
    _clean_error(result, 1, "query stopped after 1 s", "--timeout")
    assert time.monotonic() - started < 30


def test_ctrl_c_interrupts_a_query(recorded_db):
    process = subprocess.Popen(
        [sys.executable, "-m", "hbir.cli", "query", "--set", f"db.path={recorded_db}", "--timeout", "600", ENDLESS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a suite started in the background (`pytest &`) ignores SIGINT, and so would the child: Ctrl-C is a
        # terminal's, so give the child a terminal's SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        time.sleep(8)  # imports, the snapshot, and the query under way
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and "query interrupted" in stderr and "Traceback" not in stderr


def test_a_long_query_never_makes_a_writer_wait(recorded_db):
    """While a query runs for a minute, runs start and write: the query reads a snapshot and holds no lock."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hbir.cli", "query", "--set", f"db.path={recorded_db}", "--timeout", "60", ENDLESS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as above
    )  # fmt: skip
    try:
        time.sleep(8)
        assert process.poll() is None
        started = time.monotonic()
        start_run(str(recorded_db), RunRecord("second", "validate", {}), lock_timeout_s=2)
        assert time.monotonic() - started < 2
    finally:
        process.send_signal(signal.SIGINT)  # its snapshot is removed on the way out
        try:
            process.wait(timeout=30)
        finally:
            process.kill()
    assert db_rows(recorded_db, "SELECT run_id FROM runs ORDER BY run_id") == [("first",), ("second",)]


# -- stale and doubled runs ----------------------------------------------------------------------------------------


def test_a_run_killed_with_sigkill_shows_stale_and_its_id_can_be_taken_again(run_hbir, smoke, paths):
    command = [sys.executable, "-m", "hbir.cli", "eval", *smoke, "--run-id", "killed-eval"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not (paths["runs"] / "killed-eval").exists():
        time.sleep(0.05)  # the run's folder appears once it is recorded running
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert db_rows(paths["db"], "SELECT status FROM runs") == [("running",)]

    listed = run_hbir("runs", *smoke, "--format", "json")
    assert json.loads(listed.output)[0]["status"] == "stale"
    again = run_hbir("eval", *smoke, "--run-id", "killed-eval")
    _clean_error(again, 1, "taken by a failed eval run")  # marked failed on the way, then refused as any failed id
    ((status, error),) = db_rows(paths["db"], "SELECT status, error FROM runs")
    assert status == "failed" and f"process {process.pid}" in error and "was gone" in error


def test_fail_stale_marks_runs_of_dead_processes_failed(run_hbir, paths):
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        for run_id, pid in (("of-dead", dead.pid), ("of-live", live.pid)):
            start_run(str(paths["db"]), RunRecord(run_id, "train", {}))
            with duckdb.connect(str(paths["db"])) as connection:
                connection.execute("UPDATE runs SET pid = ? WHERE run_id = ?", [pid, run_id])
        result = run_hbir("runs", "--set", f"db.path={paths['db']}", "--fail-stale")
        assert result.exit_code == 0 and "marked failed: of-dead" in result.output
    finally:
        live.kill()
        live.wait()
    assert db_rows(paths["db"], "SELECT run_id, status FROM runs ORDER BY run_id") == [
        ("of-dead", "failed"),
        ("of-live", "running"),
    ]


def test_a_run_id_whose_process_is_alive_is_refused_naming_it(run_hbir, smoke, paths):
    live = subprocess.Popen(["sleep", "60"])
    try:
        start_run(str(paths["db"]), RunRecord("busy", "train", {}))
        with duckdb.connect(str(paths["db"])) as connection:
            connection.execute("UPDATE runs SET pid = ?", [live.pid])
        result = run_hbir("train", *smoke, "--run-id", "busy")
    finally:
        live.kill()
        live.wait()
    _clean_error(result, 1, "run id 'busy' is being run by process", str(live.pid), "choose another --run-id")
    assert db_rows(paths["db"], "SELECT status, pid FROM runs") == [("running", live.pid)]
    assert db_rows(paths["db"], "SELECT count(*) FROM train_steps") == [(0,)]


# -- databases that are not hbir's ---------------------------------------------------------------------------------


def _foreign(path: Path, sql: str) -> Path:
    with duckdb.connect(str(path)) as connection:
        connection.execute(sql)
    return path


def _tables(path: Path) -> list[str]:
    with duckdb.connect(str(path), read_only=True) as connection:
        return sorted(name for (name,) in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall())


@pytest.mark.parametrize(
    ("command", "tables"),
    [
        (["runs"], "CREATE TABLE sales (id INT)"),
        (["query", "SELECT 1"], "CREATE TABLE sales (id INT)"),
        (["runs"], "CREATE TABLE runs (id INT, what VARCHAR)"),
        (["validate"], "CREATE TABLE runs (id INT, what VARCHAR)"),
        (["migrate"], "CREATE TABLE runs (id INT, what VARCHAR)"),
    ],
)
def test_a_database_that_is_not_hbirs_is_refused_and_left_as_it_was(run_hbir, smoke, tmp_path, command, tables):
    db = _foreign(tmp_path / "theirs.duckdb", tables)
    before = _tables(db)
    result = run_hbir(*command, *smoke, "--set", f"db.path={db}")
    _clean_error(result, 1, str(db), "is not hbir's", "no schema_version table")
    assert _tables(db) == before


def test_a_database_of_a_newer_hbir_is_refused(run_hbir, smoke, paths):
    start_run(str(paths["db"]), RunRecord("first", "validate", {}))
    with duckdb.connect(str(paths["db"])) as connection:
        connection.execute("INSERT INTO schema_version VALUES (99)")
    for command in (["runs"], ["query", "SELECT 1"], ["validate"]):
        _clean_error(run_hbir(*command, *smoke), 1, "written by a newer hbir", "schema version 99", "upgrade hbir")


def test_a_read_of_an_older_schema_asks_for_migrate_and_migrate_keeps_the_runs(run_hbir, paths):
    with duckdb.connect(str(paths["db"])) as connection:  # an hbir of schema version 5, with one run
        connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, migration in enumerate(MIGRATIONS[:5], start=1):
            connection.execute(migration)
            connection.execute("INSERT INTO schema_version VALUES (?)", [version])
        connection.execute(
            "INSERT INTO runs (run_id, kind, status, config, started_at) VALUES ('old', 'train', 'completed', '{}', "
            "now())"
        )
    db = ["--set", f"db.path={paths['db']}"]
    _clean_error(run_hbir("runs", *db), 1, "schema version 5", "run `hbir migrate`")
    assert db_rows(paths["db"], "SELECT max(version) FROM schema_version") == [(5,)]  # the read changed nothing
    migrated = run_hbir("migrate", *db)
    assert migrated.exit_code == 0 and f"migrated from schema version 5 to {SCHEMA_VERSION}" in migrated.output
    listed = run_hbir("runs", *db, "--format", "json")
    assert [row["run_id"] for row in json.loads(listed.output)] == ["old"]


def test_an_in_memory_database_is_refused(run_hbir):
    result = run_hbir("validate", "--profile", "smoke", env={"HBIR_DB": ":memory:"})
    _clean_error(result, 2, "db.path", "in-memory database loses every run")


# -- contracts with holes (more cases in test_bad_input.py: invisible text, an unreadable file) -----------------------


def _beir(folder: Path, query: str, sentence: str) -> None:
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": query, "lang": "en"}) + "\n")
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": sentence, "lang": "en"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")


def test_a_training_sentence_equal_to_an_evaluation_question_is_leakage(run_hbir, paths, tmp_path):
    _beir(tmp_path / "data" / "seen", "What is the capital of France?", "Where\u200b is  PARIS?")
    _beir(tmp_path / "data" / "exam", "Where is Paris?", "Paris is on the Seine.")
    result = run_hbir(
        "validate", "--set", f"data.dir={tmp_path / 'data'}", "--set", f"db.path={paths['db']}",
        "--set", "data.train=[seen]", "--set", "data.eval=[exam]",
    )  # fmt: skip
    _clean_error(result, 1, "exam/queries", "text_in_training_data", "qid='q1'")
    assert db_rows(paths["db"], "SELECT status FROM runs") == [("failed",)]


# -- numbers that are not numbers, settings that are not settings --------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("train.lr=.inf", "finite number"),
        ("train.lr=.nan", "finite number"),
        ("train.steps=true", "not a boolean"),
        ("train.alpha=false", "not a boolean"),
        ("profile=paper", "choose it with --profile"),
    ],
)
def test_a_setting_that_is_not_a_number_or_not_a_setting_is_refused(run_hbir, smoke, paths, setting, fragment):
    _clean_error(run_hbir("train", *smoke, "--set", setting), 2, fragment)
    assert not paths["db"].exists()


def test_a_loss_that_becomes_nan_stops_training_and_keeps_the_last_good_checkpoint(run_hbir, smoke, paths):
    result = run_hbir("train", *smoke, "--set", "train.lr=1e10", "--run-id", "diverged")
    _clean_error(result, 1, "the loss became nan at step", "lower train.lr", "checkpoint of step 2 is kept")
    ((status, error),) = db_rows(paths["db"], "SELECT status, error FROM runs")
    assert status == "failed" and "the loss became nan" in error
    (step,) = [int(error.split("at step ")[1].split()[0])]
    assert db_rows(paths["db"], "SELECT max(step) FROM train_steps") == [(step - 1,)]  # every finite step, no NaN
    assert (paths["runs"] / "diverged" / "checkpoints" / "step-000002" / "model.safetensors").is_file()
    assert not (paths["runs"] / "diverged" / "model").exists()


def test_a_value_in_an_error_is_shortened(run_hbir, smoke):
    result = run_hbir("train", *smoke, "--set", "train.alpha=" + "x" * 50_000_000)
    _clean_error(result, 2, "train.alpha", "...")
    assert len(result.output) < 2000


@pytest.mark.parametrize("source", ["big", "/dev/zero"])
def test_a_settings_file_over_1_mib_is_refused_before_parsing(run_hbir, smoke, tmp_path, source):
    path = tmp_path / "big.yaml" if source == "big" else Path(source)
    if source == "big":
        path.write_text("train:\n  steps: 1\n" + "# padding\n" * 200_000)
    started = time.monotonic()
    _clean_error(run_hbir("train", *smoke, "--config", str(path)), 2, str(path), "over 1 MiB")
    assert time.monotonic() - started < 10


# -- disk ----------------------------------------------------------------------------------------------------------


def test_a_completed_run_leaves_its_model_and_no_checkpoints(run_hbir, smoke, paths):
    assert run_hbir("train", *smoke, "--run-id", "lean").exit_code == 0
    folder = paths["runs"] / "lean"
    assert (folder / "model" / "model.safetensors").is_file()
    assert not (folder / "checkpoints").exists() and not (folder / "pairs.parquet").exists()
    kept = run_hbir("train", *smoke, "--run-id", "kept", "--set", "train.keep_checkpoints_after_run=true")
    assert kept.exit_code == 0 and (paths["runs"] / "kept" / "checkpoints" / "step-000004").is_dir()


def test_gc_removes_model_folders_but_the_champions_and_the_kept_ones(run_hbir, smoke, paths):
    for run_id in ("champ", "keep-me", "old"):
        assert run_hbir("train", *smoke, "--run-id", run_id).exit_code == 0
    with duckdb.connect(str(paths["db"])) as connection:  # as scheduled retraining promotes a model
        connection.execute(
            "INSERT INTO models VALUES ('champ', 'p', 's', ['xquad-r'], 0.5, NULL, NULL, true, now(), now())"
        )
    dry = run_hbir("gc", *smoke, "--keep", "keep-me", "--dry-run")
    assert dry.exit_code == 0 and "would free" in dry.output and "MiB  old" in dry.output
    assert "champ" not in dry.output and "keep-me" not in dry.output
    assert (paths["runs"] / "old" / "model").is_dir()  # a dry run removes nothing

    done = run_hbir("gc", *smoke, "--keep", "keep-me")
    assert done.exit_code == 0 and "freed" in done.output
    assert not (paths["runs"] / "old" / "model").exists()
    assert (paths["runs"] / "champ" / "model").is_dir() and (paths["runs"] / "keep-me" / "model").is_dir()
    assert db_rows(paths["db"], "SELECT count(*) FROM runs WHERE status = 'completed'") == [(3,)]


class _Payload:
    """A pickle that would run a command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_hbir_did_not_write_is_refused_naming_it(run_hbir, smoke, paths, tmp_path):
    options = ["--set", "train.lr=1e10", "--run-id", "tampered"]
    assert run_hbir("train", *smoke, *options).exit_code == 1  # diverges after its checkpoint of step 2
    checkpoint = paths["runs"] / "tampered" / "checkpoints" / "step-000002"
    marker = tmp_path / "it-ran"
    (checkpoint / "optimizer.pt").write_bytes(pickle.dumps(_Payload(marker)))

    result = run_hbir("train", *smoke, *options)  # resumes from that checkpoint
    _clean_error(result, 1, str(checkpoint), "holds objects hbir does not load", "nothing of it was run")
    assert "weights_only" not in result.output
    assert not marker.exists()
