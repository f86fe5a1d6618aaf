"""Disk a run's files take after it has completed, and ``hbir gc``, which gives it back.

    found = collectable(config, keep=["my-best-run"])   # model and checkpoint folders nobody needs, with sizes
    remove(found)

A completed run keeps its model folder (and, with ``train.keep_checkpoints_after_run``, its checkpoints). ``hbir gc``
removes those of completed runs that are not the champion, not asked to be kept (``--keep``) and not the model
another run is using right now; failed and running runs keep everything (they continue from their checkpoints).
The runs' rows in the results database stay: only files go.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from hbir.core.config import Config
from hbir.core.errors import HbirError
from hbir.core.paths import run_dir
from hbir.store.query import read

FOLDERS = ("model", "checkpoints")  # what gc may remove of a run's folder


@dataclass(frozen=True)
class Garbage:
    run_id: str
    path: Path
    bytes: int


def collectable(config: Config, keep: list[str] | tuple[str, ...] = ()) -> list[Garbage]:
    """The model and checkpoint folders ``hbir gc`` would remove (module doc), largest first."""
    db, timeout = config.db.path, config.db.lock_timeout_s
    champion = _champion(db, timeout)
    found = read(
        db,
        "SELECT run_id, config, "
        "run_id IN (SELECT parent_run_id FROM runs WHERE status = 'running' AND parent_run_id IS NOT NULL) AS in_use "
        "FROM runs WHERE status IN ('completed', 'skipped')",
        [],
        timeout,
    )
    spared = {*keep, *([champion] if champion else [])}
    garbage = []
    for row in found.itertuples():
        if row.run_id in spared or row.in_use:
            continue
        try:
            folder = run_dir(json.loads(row.config)["output"]["dir"], row.run_id)
        except HbirError:  # an id from before ids were checked: not a path to delete under
            continue
        found_here = [folder / name for name in FOLDERS if (folder / name).is_dir()]
        garbage += [Garbage(row.run_id, path, _size(path)) for path in found_here]
    return sorted(garbage, key=lambda item: -item.bytes)


def remove(garbage: list[Garbage]) -> int:
    """Delete the folders; returns the bytes freed."""
    for item in garbage:
        shutil.rmtree(item.path)
    return sum(item.bytes for item in garbage)


def _champion(db: str, lock_timeout_s: float) -> str | None:
    found = read(db, "SELECT run_id FROM models WHERE champion", [], lock_timeout_s)
    return None if found.empty else str(found["run_id"].iloc[0])


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
