"""Training on several ranks: the train stage starts ``torchrun`` as a subprocess (the flow stays the DAG; a Prefect
worker on a GPU node runs it unchanged), and each rank it starts runs this module.

    result = train_on_ranks(config, run_id, pairs_path, log)       # in the train stage, when train.world_size > 1
    python -m hbir.app.train_ranks --spec <run_dir>/train-spec.json  # one rank (torchrun starts it, on every node)
    torchrun --nproc_per_node 2 -m hbir.cli train ...                # an outside torchrun: rank 0 runs the command,
                                                                     # the other ranks only train (follow_rank_zero)

The stage writes the run's spec (config, run id, pairs) to ``<run_dir>/train-spec.json`` and every rank reads it, so
the other nodes of a multi-node run start the same torchrun command (the stage logs it). Rank 0 writes the step log,
checkpoints and the model, and ``train-result.json``; a rank that dies ends the run as failed with a message naming
it, and the same command resumes from the last checkpoint, with any number of ranks. The run folder must be on a
file system every node sees.

Under an outside torchrun (a Kubernetes PyTorchJob, a Slurm script that starts torchrun) every rank runs the ``hbir``
command: rank 0 runs it as usual and trains on the group that torchrun made (``train_in_this_group``), the other
ranks train each spec it sends them (``follow_rank_zero``) until its command ends and tells them to stop
(``release_followers``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections import deque
from dataclasses import asdict
from pathlib import Path

from hbir.core.config import Config, TrainConfig
from hbir.core.errors import HbirError
from hbir.core.files import read_file_bytes, write_text
from hbir.core.paths import run_dir
from hbir.core.torchrun import under_torchrun

ERROR_PREFIX = "hbir-rank-error: "  # + "<rank> <message>": a rank's hbir error (for the user, not a traceback)
TRACEBACK = re.compile(r"(\[rank\d+\]:\s*)?Traceback \(most recent call last\)")  # a rank's, or torchrun's
KEPT_LINES = 200  # of torchrun's output, to find the rank that failed
DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0  # train.collective_timeout_s's default, for ranks that have no config yet
FOLLOWER_TIMEOUT_S = 7 * 24 * 3600.0  # an outside torchrun's other ranks wait for rank 0's command this long


class RankFailure(HbirError):
    """A rank died or hung (killed, out of memory, a lost node): not the user's mistake, and a second try resumes
    from the last checkpoint, so the flow's train task retries it."""

    retryable = True


def train_on_ranks(config: Config, run_id: str, pairs_path: str, log=print):
    """Train the run on ``train.world_size`` ranks through torchrun; returns rank 0's ``TrainResult``."""
    from tasks.training import TrainResult

    out_dir = run_dir(config.output.dir, run_id)
    spec_path, result_path = out_dir / "train-spec.json", out_dir / "train-result.json"
    write_text(spec_path, json.dumps(_spec(config, run_id, pairs_path)))
    result_path.unlink(missing_ok=True)
    train = config.train
    log(f"training on {train.world_size} ranks ({train.nproc_per_node} per node x {train.nnodes} nodes)")
    command = torchrun_command(train, run_id, spec_path)
    if train.nnodes > 1:
        log("on each other node, run: " + shlex.join(["python", *command[1:]]))
    returncode, tail, held, errors = _run_streaming(command, _rank_environment(train), log)
    if returncode != 0:
        if errors:  # a rank's own hbir error (rank 0's first): the user's message as it is
            raise HbirError(sorted(errors)[0][1])
        message = failure_message(tail, returncode)
        if held:
            details = write_text(out_dir / "ranks" / "torchrun-failure.log", "\n".join(held) + "\n")
            message += f" (torchrun's report: {details})"
        raise RankFailure(message)
    found = json.loads(result_path.read_text())
    spec_path.unlink()  # both written again by the next start
    result_path.unlink()
    found["model_dir"] = Path(found["model_dir"])
    return TrainResult(**found)


def train_in_this_group(config: Config, run_id: str, pairs_path: str, log=print):
    """This process is rank 0 of a group an outside torchrun started: send the spec to the other ranks (waiting in
    ``follow_rank_zero``) and train with them; returns the ``TrainResult``. Any failure is an HbirError, never
    retried: the other ranks may be stuck in a collective of the failed run, so the torchrun job ends with it."""
    from tasks import distributed
    from tasks.training import pick_device

    device = pick_device("auto").type  # what the other ranks, which have no config, find
    if pick_device(config.train.device).type != device:
        raise HbirError(f"under an outside torchrun every rank trains on the device it finds ({device}); "
                        f"train.device={config.train.device} asks for another: leave it at auto")  # fmt: skip
    ranks = distributed.join(device, config.train.collective_timeout_s)
    log(f"training on the {ranks.world_size} ranks of the torchrun that started hbir")
    spec = _spec(config, run_id, pairs_path)
    distributed.broadcast_object(spec, ranks)
    try:
        return _train(spec, ranks, log)
    except HbirError:
        raise
    except Exception as error:
        raise HbirError(f"training on the torchrun group failed: {type(error).__name__}: {error}") from error


def follow_rank_zero() -> int:
    """A rank other than 0 of an outside torchrun: train each spec rank 0 sends until it sends None (its command is
    done), then exit (0; 2 after an hbir error, which it prints)."""
    from tasks import distributed
    from tasks.training import pick_device

    # waits as long as rank 0's command takes before it trains (ingesting, validating); rank 0's own collectives
    # time out after train.collective_timeout_s, and torchrun then stops every rank
    ranks = distributed.join(pick_device("auto").type, FOLLOWER_TIMEOUT_S)
    try:
        while (spec := distributed.broadcast_object(None, ranks)) is not None:
            _train(spec, ranks, lambda line: None)
    except HbirError as error:
        _report_error(ranks, error)
        return 2
    finally:
        distributed.leave()
    return 0


def release_followers() -> None:
    """Rank 0 of an outside torchrun, at the end of its command: the other ranks stop waiting for a spec."""
    from tasks import distributed
    from tasks.training import pick_device

    if not under_torchrun() or os.environ["RANK"] != "0":
        return
    ranks = distributed.join(pick_device("auto").type, DEFAULT_COLLECTIVE_TIMEOUT_S)
    distributed.broadcast_object(None, ranks)
    distributed.leave()


def torchrun_command(train: TrainConfig, run_id: str, spec_path: Path) -> list[str]:
    """``python -m torch.distributed.run`` for this node: one process per rank, no restarts (a failed rank fails the
    run, which resumes from its checkpoint); one node: a standalone rendezvous on a free port; several: c10d at
    ``train.rdzv_endpoint`` with the run id as rendezvous id. Every rank reads the spec (the run folder is on a file
    system all nodes share), so it does not matter which node's rank torchrun numbers 0."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={train.nproc_per_node}",
               "--max_restarts=0"]  # fmt: skip
    if train.nnodes == 1:
        command.append("--standalone")
    else:
        command += [f"--nnodes={train.nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={train.rdzv_endpoint}",
                    f"--rdzv_id={run_id}"]  # fmt: skip
    return command + ["-m", "hbir.app.train_ranks", "--spec", str(spec_path), "--device", train.device,
                      "--collective-timeout", f"{train.collective_timeout_s:g}"]  # fmt: skip


def failure_message(tail: list[str], returncode: int) -> str:
    """What a failed torchrun means for the user: the rank that failed first, with its exit code and how to continue.

    That is the rank torchrun names as the root cause, unless torchrun stopped that one itself (SIGTERM) and another
    rank died of a signal: a rank killed (SIGKILL, out of memory) makes the others' collectives fail at once, and one
    of them can record its error before torchrun sees the kill and so be named the root cause."""
    text = "\n".join(tail)
    listed, _, cause = text.split("Failures:", 1)[-1].rpartition("Root Cause")  # no root cause: all is searched
    root_cause = _failure(cause)
    others = [_failure(block) for block in re.split(r"^\[\d+\]:", listed, flags=re.M)]
    killed = [failure for failure in others if failure["rank"] and failure["signal"] not in (None, "SIGTERM")]
    failure = killed[0] if root_cause["signal"] == "SIGTERM" and killed else root_cause
    rank, host, code, signal = failure["rank"], failure["host"], failure["exitcode"], failure["signal"]
    where = (f"rank {rank}" + (f" on {host}" if host else "")) if rank else "a rank"
    how = f"exit code {code}{f' ({signal})' if signal else ''}" if code else f"torchrun exit code {returncode}"
    return (
        f"training failed: {where} stopped ({how}); the other ranks were stopped; run the same command again to "
        "continue from the last checkpoint (any number of ranks)"
    )


def _failure(block: str) -> dict[str, str | None]:
    """One failure of torchrun's report (its rank, host, exit code and signal; None where the block has none)."""
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    host = re.search(r"host\s*:\s*(\S+)", block)
    code = re.search(r"exitcode\s*:\s*(-?\d+)[^\n]*?(?:\((SIG\w+)\))?\s*$", block, re.MULTILINE)
    return {"rank": rank and rank.group(1), "host": host and host.group(1), "exitcode": code and code.group(1),
            "signal": code and code.group(2)}  # fmt: skip


def _rank_environment(train: TrainConfig) -> dict[str, str]:
    """The ranks' environment: this one, with the CPU threads shared between the ranks of this node."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // train.nproc_per_node)))
    return env


def _run_streaming(
    command: list[str], env: dict[str, str], log
) -> tuple[int, list[str], list[str], list[tuple[int, str]]]:
    """Run ``command``, passing its output lines to ``log``; returns its exit code, its last lines, the lines held
    back from the first traceback on (torchrun's failure report: logged only if the command succeeds after all,
    else written to a file the error names), and the ranks' hbir errors as (rank, message)."""
    tail: deque[str] = deque(maxlen=KEPT_LINES)
    held: list[str] = []
    errors: list[tuple[int, str]] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          errors="replace") as process:  # fmt: skip
        try:
            for line in process.stdout:
                line = line.rstrip("\n").split("\r")[-1]
                tail.append(line)
                if line.startswith(ERROR_PREFIX):
                    rank, _, message = line.removeprefix(ERROR_PREFIX).partition(" ")
                    errors.append((int(rank), message if int(rank) == 0 else f"rank {rank}: {message}"))
                    continue
                if held or TRACEBACK.match(line):
                    held.append(line)
                elif line:
                    log(line)
        except BaseException:  # Ctrl-C, a cancelled flow: the ranks stop with us
            process.terminate()
            raise
    if process.returncode == 0:
        for line in held:
            log(line)
    return process.returncode, list(tail), held, errors


# -- one rank ------------------------------------------------------------------------------------------------------


def rank_main(argv: list[str] | None = None) -> int:
    """One rank: join the group, get the spec from rank 0, train; rank 0 writes ``train-result.json``."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_rank)(argv)


def _rank(argv: list[str] | None) -> int:
    from tasks import distributed
    from tasks.training import pick_device

    parser = argparse.ArgumentParser(prog="python -m hbir.app.train_ranks")
    parser.add_argument("--spec", required=True, help="the run's train-spec.json (hbir writes it)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--collective-timeout", type=float, default=DEFAULT_COLLECTIVE_TIMEOUT_S)
    args = parser.parse_args(argv)
    ranks = distributed.join(pick_device(args.device).type, args.collective_timeout)
    try:
        spec = json.loads(read_file_bytes(args.spec))
        result = _train(spec, ranks, lambda line: print(line, flush=True))
        if ranks.is_main:
            out_dir = run_dir(Config.model_validate(spec["config"]).output.dir, spec["run_id"])
            found = asdict(result) | {"model_dir": str(result.model_dir)}
            write_text(out_dir / "train-result.json", json.dumps(found))
    except HbirError as error:
        _report_error(ranks, error)
        return 2
    finally:
        distributed.leave()
    return 0


def _spec(config: Config, run_id: str, pairs_path: str) -> dict:
    """What every rank needs to train run ``run_id`` (JSON: the spec file, or a broadcast)."""
    return {"config": config.model_dump(mode="json"), "run_id": run_id, "pairs_path": pairs_path}


def _report_error(ranks, error: HbirError) -> None:
    """A rank's hbir error as one line the launching process finds (``ERROR_PREFIX``) and shows the user."""
    print(f"{ERROR_PREFIX}{ranks.rank} " + " ".join(str(error).split()), flush=True)


def _train(spec: dict, ranks, log):
    """Train the run of ``spec`` as ``ranks.rank`` (``stages.fine_tune_run``)."""
    from hbir.app.stages import fine_tune_run

    return fine_tune_run(Config.model_validate(spec["config"]), spec["run_id"], spec["pairs_path"], log, ranks)


if __name__ == "__main__":
    sys.exit(rank_main())
