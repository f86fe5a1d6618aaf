"""A study: a grid of train-eval runs (strategy x alpha x seed x datasets) tied together by a ``study_id``.

A study file (YAML) names the study, the profile, settings shared by every run, and grids whose keys are dotted
config keys with lists of values; each grid is the product of its lists, the study the union of its grids:

    study_id: hybrid-vs-pure
    profile: cpu
    settings: {train.steps: 100}
    zero_shot: true                    # also model.source untrained (train.steps 0) on each evaluation set
    grids:
      - {train.strategy: [mono, cross, hybrid], train.seed: [0, 1, 2]}
      - {train.strategy: [hybrid], train.alpha: [0.25, 0.75]}

Every grid point gets a fixed run id (``<study_id>-<values>``), so a study started again skips the points that
completed with the same settings and continues the others (``plan``). The flow in ``flows/study.py`` runs them,
and ``check_completed`` fails the study at the end, naming the runs that failed.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hbir.core.config import PROFILES, Config, load_config, read_settings_file
from hbir.core.errors import ConfigError, HbirError
from hbir.core.run_ids import check_run_id
from hbir.store import database
from hbir.store.query import read
from hbir.store.runs import changed_keys, trained_model

DEFAULT_STUDY = "hybrid-vs-pure"  # hbir/studies/<name>.yaml, what `hbir study` runs without --config


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # default: the file's name
    profile: str = "cpu"
    settings: dict[str, Any] = {}
    zero_shot: bool = True
    grids: list[dict[str, list[Any]]] = Field(min_length=1)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown profile {value!r}: choose one of {', '.join(PROFILES)}")
        return value

    @field_validator("grids")
    @classmethod
    def _non_empty_lists(cls, grids: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for grid in grids:
            empty = [key for key, values in grid.items() if not values]
            if not grid or empty:
                raise ValueError(f"a grid needs at least one key and every key a value; empty: {empty or grid}")
        return grids


@dataclass(frozen=True)
class StudyPoint:
    run_id: str
    overrides: dict[str, Any]  # the study's settings and the point's values, dotted keys
    config: Config
    done: bool  # completed before, with these settings
    # a merged point (train.merge) whose settings without train.merge are another point's: that point's run id. Its
    # model is then merged from that run's model instead of trained again (the same training: the same model)
    parent: str | None = None


@dataclass(frozen=True)
class StudyPlan:
    study_id: str
    profile: str
    points: list[StudyPoint]

    @property
    def pending(self) -> list[StudyPoint]:
        return [point for point in self.points if not point.done]


def read_study(path: str | Path | None) -> tuple[StudySpec, str]:
    """The study file (the built-in default when None) and its study id."""
    if path is None:
        text, name = resources.files("hbir.studies").joinpath(f"{DEFAULT_STUDY}.yaml").read_text("utf-8"), DEFAULT_STUDY
    else:
        text, name = read_settings_file(Path(path), "study file"), Path(path).stem
    try:
        spec = StudySpec.model_validate(yaml.safe_load(text) or {})
    except (yaml.YAMLError, ValidationError) as error:
        raise ConfigError(f"study file {path or DEFAULT_STUDY}: {error}") from None
    return spec, spec.study_id or name


def plan(
    path: str | Path | None = None, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> StudyPlan:
    """Every run of the study with its settings, and which of them completed before. ``profile`` and
    ``overrides`` (dotted keys) replace the file's profile and add to its settings, for every run."""
    spec, study_id = read_study(path)
    profile = profile or spec.profile
    shared = {**spec.settings, **(overrides or {})}
    points = [
        dict(zip(grid, values, strict=True)) for grid in spec.grids for values in itertools.product(*grid.values())
    ]
    runs: dict[str, dict[str, Any]] = {}
    for point in points:
        runs.setdefault(_run_id(study_id, point), {**shared, **point})
    if spec.zero_shot:  # first: the baselines are quick, and a study cut short has them
        baselines: dict[str, dict[str, Any]] = {}
        for settings in runs.values():
            datasets = {key: settings[key] for key in ("data.train", "data.eval") if key in settings}
            baselines.setdefault(_run_id(study_id, {"zero-shot": True, **datasets}), {**settings, "train.steps": 0})
        runs = {**baselines, **runs}
    parents = _merge_parents(runs)
    db_runs = _recorded(load_config(profile, None, shared))
    planned = []
    for run_id, settings in _after_parents(runs, parents).items():
        config = load_config(profile, None, settings)
        done = _done(run_id, config, db_runs.get(run_id))
        planned.append(StudyPoint(run_id, settings, config, done, parents.get(run_id)))
    return StudyPlan(study_id, profile, planned)


def _merge_parents(runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{merged run id: parent run id}: the merged points (``train.merge`` set) whose other settings are a point
    of the study that is not merged."""
    unmerged = {
        json.dumps(settings, sort_keys=True, default=str): run_id
        for run_id, settings in runs.items()
        if settings.get("train.merge") is None
    }
    parents = {}
    for run_id, settings in runs.items():
        if settings.get("train.merge") is not None:
            rest = {key: value for key, value in settings.items() if key != "train.merge"}
            parent = unmerged.get(json.dumps(rest, sort_keys=True, default=str))
            if parent is not None:
                parents[run_id] = parent
    return parents


def _after_parents(runs: dict[str, dict[str, Any]], parents: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The runs with each merged point right after its parent, so that the parent's model is still there (a run
    folder lives on one machine) when the merged point runs."""
    children: dict[str, list[str]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    ordered: dict[str, dict[str, Any]] = {}
    for run_id, settings in runs.items():
        if run_id in parents:
            continue
        ordered[run_id] = settings
        for child in children.get(run_id, []):
            ordered[child] = runs[child]
    return ordered


def parent_model(config: Config, point: StudyPoint) -> str | None:
    """The parent run of a merged point when its model is there to merge from (completed, its folder present),
    else None: the point is then trained (with ``train.merge``) like any other."""
    if point.parent is None:
        return None
    try:
        trained_model(config.db.path, point.parent, config.db.lock_timeout_s)
    except HbirError:
        return None
    return point.parent


def _run_id(study_id: str, point: dict[str, Any]) -> str:
    """``<study_id>-hybrid-a0.25-s0``: the point's values, short and readable."""
    short = {
        "train.strategy": "", "train.alpha": "a", "train.seed": "s", "data.train": "train-", "data.eval": "eval-",
        "train.merge": "merged-",
    }  # fmt: skip
    parts = []
    for key, value in point.items():
        value = "_".join(map(str, value)) if isinstance(value, list) else value
        parts.append("zero-shot" if key == "zero-shot" else f"{short.get(key, key.rsplit('.', 1)[-1])}{value}")
    run_id = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{study_id}-{'-'.join(parts)}")
    return check_run_id(run_id, f"study {study_id}: run id")


def _recorded(config: Config) -> dict[str, dict[str, Any]]:
    """{run_id: {status, config}} of the runs in the results database."""
    if not database.exists(config.db.path):
        return {}
    sql = "SELECT run_id, status, config FROM runs"
    found = read(config.db.path, sql, [], config.db.lock_timeout_s, upgrade_old=True)  # the study then writes
    return {row.run_id: {"status": row.status, "config": json.loads(row.config)} for row in found.itertuples()}


def _done(run_id: str, config: Config, recorded: dict[str, Any] | None) -> bool:
    if recorded is None or recorded["status"] != "completed":
        return False  # new, or failed / killed: (re)started, training continues from its last checkpoint
    current = json.loads(json.dumps(config.model_dump(mode="json")))
    if changed_keys(_without_paths(recorded["config"]), _without_paths(current)):
        raise HbirError(
            f"run {run_id} of this study completed with other settings: give the study another study_id (or "
            "restore the settings) so that its runs are not mixed with these"
        )
    return True


def _without_paths(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings without where files live (data.dir, db, output): moving the project keeps a study's runs."""
    kept = {key: value for key, value in config.items() if key not in ("db", "output")}
    return {**kept, "data": {key: value for key, value in config.get("data", {}).items() if key != "dir"}}


def check_completed(plan: StudyPlan, completed: dict[str, bool]) -> None:
    """Raise HbirError naming the runs of the study that did not complete (``completed``: run id -> whether)."""
    failed = [run_id for run_id, done in completed.items() if not done]
    if failed:
        raise HbirError(
            f"study {plan.study_id}: {len(failed)} of {len(completed)} runs failed ({', '.join(failed)}); their errors "
            "are in `hbir runs`. Start the study again to continue them."
        )
