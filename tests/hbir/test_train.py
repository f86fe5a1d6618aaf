"""`hbir train` as a user runs it: the smoke profile on the real data, each strategy, and a kill -9 in the middle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import db_rows


@pytest.fixture
def smoke(lareqa_dir, db_path, tmp_path):
    """Options that put data, database and run folders where the test wants them."""
    return [
        "--profile",
        "smoke",
        "--set",
        f"data.dir={lareqa_dir}",
        "--set",
        f"db.path={db_path}",
        "--set",
        f"output.dir={tmp_path / 'runs'}",
    ]


rows = db_rows


@pytest.mark.parametrize(
    ("strategy", "kinds"), [("mono", {"mono"}), ("cross", {"cross"}), ("hybrid", {"mono", "cross"})]
)
def test_smoke_training_logs_the_batch_kinds_of_its_strategy(run_hbir, smoke, db_path, tmp_path, strategy, kinds):
    result = run_hbir("train", *smoke, "--set", f"train.strategy={strategy}", "--run-id", strategy)
    assert result.exit_code == 0, result.output
    assert "trained 4 steps" in result.output
    assert rows(db_path, "SELECT kind, status, strategy FROM runs") == [("train", "completed", strategy)]
    steps = rows(db_path, "SELECT step, batch_kind, dataset FROM train_steps ORDER BY step")
    assert [step for step, _, _ in steps] == [1, 2, 3, 4]
    assert {kind for _, kind, _ in steps} == kinds  # hybrid: the smoke profile's 4 steps show both kinds
    assert {dataset for _, _, dataset in steps} == {"mlqa-r"}
    ((path, sha256),) = rows(db_path, "SELECT path, sha256 FROM artifacts WHERE kind = 'model'")
    assert path == str(tmp_path / "runs" / strategy / "model") and len(sha256) == 64
    assert rows(db_path, "SELECT count(*) FROM dataset_versions")[0][0] == 18


def test_a_completed_run_is_not_trained_again(run_hbir, smoke):
    assert run_hbir("train", *smoke, "--run-id", "done").exit_code == 0
    again = run_hbir("train", *smoke, "--run-id", "done")
    assert again.exit_code == 1
    assert "run id 'done' is taken by a completed train run" in again.output


def test_resuming_with_other_settings_is_refused(run_hbir, smoke, db_path):
    failed = run_hbir("train", *smoke, "--run-id", "r", "--set", "model.source=path:/no/such/model")
    assert failed.exit_code == 2 and "/no/such/model is not a directory" in failed.output
    assert rows(db_path, "SELECT status FROM runs") == [("failed",)]
    other = run_hbir("train", *smoke, "--run-id", "r", "--set", "train.steps=5")
    assert other.exit_code == 1
    assert "with other settings" in other.output and "train.steps" in other.output


def test_a_run_killed_with_sigkill_resumes_and_logs_each_step_once(smoke, db_path, tmp_path):
    """kill -9 right after the first checkpoint, start the same command again: it finishes the configured steps."""
    command = [sys.executable, "-m", "hbir.cli", "train", *smoke, "--run-id", "killed"]
    command += ["--set", "train.steps=300", "--set", "train.checkpoint_every=50"]
    first_checkpoint = tmp_path / "runs" / "killed" / "checkpoints" / "step-000050"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 180
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert rows(db_path, "SELECT status FROM runs WHERE run_id = 'killed'") == [("running",)]
    assert rows(db_path, "SELECT max(step) FROM train_steps")[0][0] < 300

    resumed = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming run killed" in resumed.stderr and "resumed after step" in resumed.stdout
    assert rows(db_path, "SELECT status FROM runs WHERE run_id = 'killed'") == [("completed",)]
    steps = [step for (step,) in rows(db_path, "SELECT step FROM train_steps WHERE run_id = 'killed' ORDER BY step")]
    assert steps == list(range(1, 301))
    assert (tmp_path / "runs" / "killed" / "model" / "model.safetensors").is_file()


def test_bad_data_stops_training_before_it_starts(run_hbir, lareqa_dir, db_path, tmp_path):
    """A truncated evaluation file: exit 1 naming the file, a failed run, no steps, no checkpoints, no model."""
    data = tmp_path / "data"
    (data / "xquad-r").mkdir(parents=True)
    (data / "mlqa-r").symlink_to(lareqa_dir / "mlqa-r")
    for source in (lareqa_dir / "xquad-r").glob("*.json"):
        (data / "xquad-r" / source.name).symlink_to(source)
    (data / "xquad-r" / "de.json").unlink()
    (data / "xquad-r" / "de.json").write_text((lareqa_dir / "xquad-r" / "de.json").read_text()[:5000])

    runs = tmp_path / "runs"
    result = run_hbir(
        "train", "--profile", "smoke", "--run-id", "bad", "--set", f"data.dir={data}",
        "--set", f"db.path={db_path}", "--set", f"output.dir={runs}",
    )  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "xquad-r/de.json" in result.output
    assert rows(db_path, "SELECT status FROM runs") == [("failed",)]
    assert rows(db_path, "SELECT count(*) FROM train_steps")[0][0] == 0
    assert rows(db_path, "SELECT count(*) FROM artifacts")[0][0] == 0
    assert not runs.exists()
