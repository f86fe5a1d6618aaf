"""A run's record: its ``runs`` row from start to finish, and the rows it keeps on disk until they are stored.

    run_id, resumed = start(config, run_id, kind="train-eval")   # a 'running' row (or a failed run resumed)
    keep_rows(config, run_id, metrics_xquad=frame)                # under <output.dir>/<run_id>/rows/
    store_results(config, run_id)                                 # every kept row + 'completed', one transaction

A stage wrapped in ``records_failure`` that raises records its run as failed with the error (and the contract
outcomes it kept); nothing else of the run is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from hbir.core.config import PLACEMENT_SETTINGS, Config
from hbir.core.errors import HbirError
from hbir.core.files import data_file_digest
from hbir.core.paths import rows_dir, run_dir
from hbir.core.run_ids import check_run_id
from hbir.core.torchrun import under_torchrun
from hbir.store import runs
from hbir.store.schema import RESULT_TABLES


def new_run_id(kind: str) -> str:
    """Sortable and unique: ``validate-20261125-101500-3f9a1c``."""
    return f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def git_revision() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def describe_device(setting: str) -> str:
    """The device ``train.device`` picks, for the runs table: ``cpu (2 threads)`` or ``cuda (NVIDIA H100 ...)``."""
    import torch

    from tasks.training import pick_device

    device = pick_device(setting)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def source_fingerprint(config: Config, name: str) -> str:
    """SHA-256 of a dataset's files (names and bytes) and of the settings ingestion reads: changes when the data do.
    A Hub dataset, whose files are not at hand, ends in ``-uncached``."""
    default_lang = config.data.default_lang.get(name)  # only when set: fingerprints of other datasets stay as they were
    digest = hashlib.sha256(
        json.dumps([name, config.data.languages, *([default_lang] if default_lang else [])]).encode()
    )
    folder = Path(config.data.dir) / name
    if name.startswith("hf:") or not folder.is_dir():
        return digest.hexdigest() + "-uncached"
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        digest.update(f"{path.relative_to(folder)}\0".encode())
        digest.update(data_file_digest(path))
    return digest.hexdigest()


def training_fingerprint(config: Config) -> str:
    """SHA-256 of what a trained model depends on: the training data's files and every setting but where files
    live (data.dir, db, output). Scheduled retraining retrains only when it changes."""
    exclude = {"data": {"dir"}, "db": True, "output": True}
    for key in PLACEMENT_SETTINGS:
        section, name = key.split(".")
        exclude.setdefault(section, set()).add(name)
    settings = config.model_dump(mode="json", exclude=exclude)
    sources = [source_fingerprint(config, name) for name in config.data.train]
    return hashlib.sha256(json.dumps([sources, settings], sort_keys=True).encode()).hexdigest()


def run_record(config: Config, kind: str, run_id: str | None = None) -> runs.RunRecord:
    """The ``runs`` row of a new run. An eval run, or ``train.steps`` 0 (model.source evaluated as it is), is strategy
    zero-shot."""
    trains = config.train.steps > 0 and kind != "eval"
    return runs.RunRecord(
        run_id=run_id or new_run_id(kind),
        kind=kind,
        config=config.model_dump(mode="json"),
        strategy=config.train.strategy if trains else "zero-shot",
        alpha=config.train.mono_share if trains else None,
        model_source=config.model.source,
        seed=config.train.seed,
        git_revision=git_revision(),
        device=describe_device(config.train.device),
        inputs_fingerprint=training_fingerprint(config),
        world_size=(int(os.environ["WORLD_SIZE"]) if under_torchrun() else config.train.world_size) if trains else None,
        micro_batch_size=config.train.micro_batch_size if trains else None,
    )


def start(
    config: Config,
    run_id: str | None = None,
    kind: str = "train-eval",
    study_id: str | None = None,
    model_run: str | None = None,
    resume: bool | None = None,
) -> tuple[str, bool]:
    """Record a new run as running; returns its id and whether it was resumed. A given ``run_id`` of a run that
    failed or was killed, with the same settings, is started again (training continues from its last checkpoint)
    unless ``resume`` is False. ``model_run``: a run of the model that run trained (``hbir eval --model-run``,
    ``hbir merge``) inherits its strategy, alpha and seed, and records it as its parent."""
    db, timeout = config.db.path, config.db.lock_timeout_s
    run = replace(run_record(config, kind, run_id and check_run_id(run_id)), study_id=study_id)
    if model_run:
        trained = runs.run_info(db, model_run, timeout)
        run = replace(
            run, model_source=f"run:{model_run}", strategy=trained["strategy"], alpha=trained["alpha"],
            seed=trained["seed"], parent_run_id=model_run,
        )  # fmt: skip
    resumed = runs.start_run(db, run, lock_timeout_s=timeout, resume=run_id is not None if resume is None else resume)
    return run.run_id, resumed


def records_failure(stage):
    """Run ``stage(config, run_id, ...)``; if it raises, record run ``run_id`` as failed with the error (and the
    contract outcomes it kept), then raise again."""

    @functools.wraps(stage)
    def wrapper(config: Config, run_id: str, *args, **kwargs):
        try:
            return stage(config, run_id, *args, **kwargs)
        except BaseException as error:
            message = str(error) if isinstance(error, HbirError) else f"{type(error).__name__}: {error}"
            kept = sorted(rows_dir(config.output.dir, run_id).glob("validations*.parquet"))
            failed_rows = {"validations": pd.concat(map(pd.read_parquet, kept), ignore_index=True)} if kept else {}
            db, timeout = config.db.path, config.db.lock_timeout_s
            runs.finish_run(db, run_id, "failed", failed_rows, error=message, lock_timeout_s=timeout)
            raise

    return wrapper


def keep_rows(config: Config, run_id: str, **frames: pd.DataFrame) -> None:
    """Keep rows for the run's final transaction: ``<table>[_<part>]=frame`` under the run's ``rows`` folder."""
    folder = rows_dir(config.output.dir, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)


def kept_rows(config: Config, run_id: str) -> dict[str, pd.DataFrame]:
    """The kept rows by table: parts of one table (``metrics_xquad-r``, ``metrics_mlqa-r``) concatenated."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(rows_dir(config.output.dir, run_id).glob("*.parquet")):
        table = next(t for t in RESULT_TABLES if path.stem == t or path.stem.startswith(f"{t}_"))
        parts.setdefault(table, []).append(pd.read_parquet(path))
    return {table: pd.concat(frames, ignore_index=True) for table, frames in parts.items()}


def store_results(config: Config, run_id: str) -> dict[str, int]:
    """Write every kept row of the run and mark it completed, in one transaction; then delete what only a stopped
    run would need (its checkpoints, unless ``train.keep_checkpoints_after_run``, and its training pairs). Returns
    rows per table."""
    stored = _store_rows(config, run_id)
    folder = run_dir(config.output.dir, run_id)
    if not config.train.keep_checkpoints_after_run:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    (folder / "pairs.parquet").unlink(missing_ok=True)
    return stored


@records_failure
def _store_rows(config: Config, run_id: str) -> dict[str, int]:
    rows = kept_rows(config, run_id)
    runs.finish_run(config.db.path, run_id, "completed", rows, lock_timeout_s=config.db.lock_timeout_s)
    return {table: len(frame) for table, frame in rows.items()}


def remove_rows(config: Config, run_id: str) -> None:
    """Remove the run's kept rows (once stored), and its folder if nothing else is in it."""
    shutil.rmtree(rows_dir(config.output.dir, run_id), ignore_errors=True)
    folder = run_dir(config.output.dir, run_id)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
