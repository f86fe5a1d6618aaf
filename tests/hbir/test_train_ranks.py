"""``hbir train`` on several ranks as a user runs it: torchrun started by hbir (gloo on the CPU), a rank killed and
the run resumed, and two "nodes" (two torchrun launchers meeting at a c10d rendezvous on 127.0.0.1)."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hbir.app.train_ranks import failure_message
from tests.helpers import db_rows


@pytest.fixture
def smoke(lareqa_dir, db_path, tmp_path):
    return ["--profile", "smoke", "--set", f"data.dir={lareqa_dir}", "--set", f"db.path={db_path}",
            "--set", f"output.dir={tmp_path / 'runs'}"]  # fmt: skip


def _rank_pid(rank: int) -> int | None:
    """The pid of this machine's training process of ``rank`` (its environment says RANK=<rank>)."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            environment = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hbir.app.train_ranks" in command and f"RANK={rank}".encode() in environment:
            return int(proc.name)
    return None


def test_a_killed_rank_fails_the_run_and_the_same_command_resumes_it(smoke, db_path, tmp_path):
    command = [sys.executable, "-m", "hbir.cli", "train", *smoke, "--run-id", "ranks",
               "--set", "train.nproc_per_node=2", "--set", "train.steps=300", "--set", "train.checkpoint_every=20",
               "--set", "train.collective_timeout_s=60"]  # fmt: skip
    first_checkpoint = tmp_path / "runs" / "ranks" / "checkpoints" / "step-000020"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = _rank_pid(1)
        assert victim is not None and process.poll() is None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert time.monotonic() - killed_at < 60  # within the collective timeout
    assert process.returncode == 1, output[-3000:]
    assert "rank 1" in output and "SIGKILL" in output and "run the same command again" in output
    assert "Traceback" not in output  # torchrun's report goes to a file the error names
    assert (tmp_path / "runs" / "ranks" / "ranks" / "torchrun-failure.log").read_text().count("SIGKILL") >= 1
    assert db_rows(db_path, "SELECT status FROM runs WHERE run_id = 'ranks'") == [("failed",)]
    assert db_rows(db_path, "SELECT max(step) FROM train_steps")[0][0] < 300

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "continuing from the checkpoint of step" in resumed.stdout + resumed.stderr
    steps = [step for (step,) in db_rows(db_path, "SELECT step FROM train_steps WHERE run_id = 'ranks' ORDER BY step")]
    assert steps == list(range(1, 301))
    assert db_rows(db_path, "SELECT status, world_size, micro_batch_size FROM runs WHERE run_id = 'ranks'") == [
        ("completed", 2, None)
    ]
    assert (tmp_path / "runs" / "ranks" / "model" / "model.safetensors").is_file()


def _torchrun_report(root_cause: tuple[int, str], other: tuple[int, str]) -> list[str]:
    """The end of torchrun's output when two ranks failed: (rank, exitcode line) of the root cause and the other."""

    def failure(index: int, rank: int, exitcode: str) -> list[str]:
        return [f"[{index}]:", "  time      : 2026-12-05_16:41:17", "  host      : node-3",
                f"  rank      : {rank} (local_rank: {rank})", f"  exitcode  : {exitcode}", "  error_file: <N/A>",
                "  traceback : ..."]  # fmt: skip

    return ["hbir.app.train_ranks FAILED", "-" * 60, "Failures:", *failure(0, *other), "-" * 60,
            "Root Cause (first observed failure):", *failure(1, *root_cause), "=" * 60]  # fmt: skip


@pytest.mark.parametrize("root_cause, other", [
    ((1, "-9 (pid: 5485)  (SIGKILL)"), (0, "-15 (pid: 5484)  (SIGTERM)")),
    # rank 0's collective failed when rank 1 died, and its error was recorded before torchrun saw the kill
    ((0, "-15 (pid: 5484)  (SIGTERM)"), (1, "-9 (pid: 5485)  (SIGKILL)")),
])  # fmt: skip
def test_the_failure_names_the_killed_rank_whichever_torchrun_calls_the_root_cause(root_cause, other):
    message = failure_message(_torchrun_report(root_cause, other), 1)
    assert message.startswith("training failed: rank 1 on node-3 stopped (exit code -9 (SIGKILL))")
    assert "run the same command again" in message


def test_a_rank_that_raised_is_the_failure_even_when_another_was_stopped_by_a_signal():
    report = _torchrun_report((0, "1 (pid: 5484)"), (1, "-6 (pid: 5485)  (SIGABRT)"))
    assert failure_message(report, 1).startswith("training failed: rank 0 on node-3 stopped (exit code 1)")
    assert failure_message(["no report"], 3).startswith("training failed: a rank stopped (torchrun exit code 3)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_meet_at_a_rendezvous_and_complete_a_run(smoke, db_path, tmp_path):
    """Node 0 is ``hbir train``; node 1 runs the command node 0 logs for the other nodes."""
    endpoint = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "hbir.cli", "train", *smoke, "--run-id", "nodes", "--set", "train.nnodes=2",
               "--set", f"train.rdzv_endpoint={endpoint}", "--set", "train.steps=6"]  # fmt: skip
    main = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    follower = None
    try:
        lines = []
        for line in main.stdout:
            lines.append(line)
            if "on each other node, run: " in line:
                other = shlex.split(line.split("on each other node, run: ", 1)[1])
                assert other[0] == "python" and f"--rdzv_endpoint={endpoint}" in other
                follower = subprocess.Popen([sys.executable, *other[1:]], stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
                break
        assert follower is not None, "".join(lines)[-3000:]
        output = "".join(lines) + main.communicate(timeout=600)[0]
        follower_output = follower.communicate(timeout=60)[0]
    finally:
        main.kill()
        if follower is not None:
            follower.kill()
    assert main.returncode == 0, output[-3000:]
    assert follower.returncode == 0, follower_output[-3000:]
    assert db_rows(db_path, "SELECT status, world_size FROM runs WHERE run_id = 'nodes'") == [("completed", 2)]
    steps = [step for (step,) in db_rows(db_path, "SELECT step FROM train_steps WHERE run_id = 'nodes' ORDER BY step")]
    assert steps == list(range(1, 7))


def test_hbir_started_by_an_outside_torchrun_trains_on_its_ranks(smoke, db_path, tmp_path):
    """As a PyTorchJob or a Slurm script runs it: torchrun starts ``hbir train`` on every rank; rank 0 runs the
    command, the other rank trains with it and exits."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "hbir.cli", "train", *smoke, "--run-id", "outside", "--set", "train.steps=6"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "training on the 2 ranks of the torchrun that started hbir" in done.stdout + done.stderr
    assert db_rows(db_path, "SELECT status, world_size FROM runs WHERE run_id = 'outside'") == [("completed", 2)]
    steps = [s for (s,) in db_rows(db_path, "SELECT step FROM train_steps WHERE run_id = 'outside' ORDER BY step")]
    assert steps == list(range(1, 7))
    for rank in (0, 1):
        logged = (tmp_path / "runs" / "outside" / "ranks" / f"rank-{rank}.jsonl").read_text().splitlines()
        assert len(logged) == 6


def test_an_outside_torchrun_of_a_command_that_trains_nothing_ends(smoke, tmp_path):
    """``hbir validate`` under torchrun: rank 0 validates, and the other rank is told to stop instead of waiting."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "hbir.cli", "validate", *smoke]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
