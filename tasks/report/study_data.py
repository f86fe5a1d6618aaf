"""What a study's results document is computed from (``StudyData``) and the numbers read off it: the arm that
plays each role, means, differences, language bias and the languages unseen in training. Plain frames in, numbers
out; ``hbir/app/study_report.py`` reads the rows from the results database.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from tasks.comparison import Comparison

ROLES = ("zero-shot", "mono", "cross", "hybrid")  # the arms the claims speak of; other alphas are extra
ROLE_LABELS = {"zero-shot": "zero-shot", "mono": "mono", "cross": "cross", "hybrid": "hybrid (a=0.5)"}
HYBRID_ALPHA = 0.5  # the paper's hybrid arm
LAST_STEPS = 10  # the final loss: mean over the last training steps


@dataclass(frozen=True)
class StudyData:
    """What the document is computed from: the comparison and the rows of the compared runs."""

    study_id: str
    db: str
    comparison: Comparison
    runs: pd.DataFrame  # comparison.runs + role, config, train_datasets, eval, device, git_revision, minutes, loss
    metrics: pd.DataFrame  # mAP rows of `metrics`: run_id, arm, dataset, setting, query_lang, corpus_lang, value
    versions: pd.DataFrame  # dataset_versions: run_id, dataset, lang, n_queries
    steps: pd.DataFrame  # train_steps: run_id, arm, step, loss
    dev: pd.DataFrame = field(default_factory=pd.DataFrame)  # dev_metrics (map): run_id, arm, step, setting, value

    @property
    def permutations(self) -> int | None:
        differences = self.comparison.differences
        return int(differences["permutations"].iloc[0]) if len(differences) else None

    @property
    def datasets(self) -> list[str]:
        return sorted(self.comparison.arms["dataset"].unique())


@dataclass(frozen=True)
class Cohort:
    """The runs of one evaluation dataset trained on the same data, with the arm that plays each role."""

    dataset: str
    train: str
    roles: dict[str, str]  # role (zero-shot, mono, cross, hybrid) -> arm name, for the roles present
    unseen: list[str] = field(default_factory=list)  # evaluation languages absent from the training data


def run_table(compared: pd.DataFrame, runs: pd.DataFrame, losses: pd.DataFrame) -> pd.DataFrame:
    """The compared runs (``Comparison.runs``) with their role, config, training and evaluation data, minutes and
    final loss, from their ``runs`` rows (run_id, config, device, git_revision, started_at, finished_at) and
    ``losses`` (run_id, final_loss)."""
    configs = runs["config"].map(json.loads)
    runs = runs.assign(
        config=configs,
        train_datasets=configs.map(lambda config: list(config["data"]["train"])),
        eval=configs.map(lambda config: "+".join(config["data"]["eval"])),
        minutes=(runs["finished_at"] - runs["started_at"]).dt.total_seconds() / 60,
    )
    table = compared.merge(runs, on="run_id").merge(losses, on="run_id", how="left")
    table["role"] = [role_of(row.strategy, row.alpha, row.merge) for row in table.itertuples()]
    return table


def role_of(strategy: str, alpha: float | None, merge: str | None = None) -> str | None:
    """The part an arm plays in the paper's claims: zero-shot, mono, cross, hybrid (a=0.5); None for other alphas and
    for models merged with their base (the claims are about the training strategies)."""
    if merge is not None and not pd.isna(merge):
        return None
    if strategy == "hybrid":
        return "hybrid" if alpha is not None and math.isclose(alpha, HYBRID_ALPHA) else None
    return strategy if strategy in ROLES else None


def arm_order(runs: pd.DataFrame) -> list[str]:
    """Arms as the tables list them: zero-shot, then per training data mono, cross, hybrid a=0.5, other alphas."""
    rank = {role: i for i, role in enumerate(ROLES)}
    keyed = runs.assign(
        _zero=runs["strategy"] != "zero-shot",
        _role=runs["role"].map(lambda role: rank.get(role, len(ROLES))),
        _alpha=runs["alpha"].fillna(-1.0),
        _merge=runs["merge"].fillna("") if "merge" in runs else "",
    )
    order = ["_zero", "train", "_merge", "_role", "_alpha"]
    return keyed.sort_values(order)["arm"].drop_duplicates().tolist()


def cohorts(data: StudyData, dataset: str) -> list[Cohort]:
    """Per training data of the trained runs evaluated on ``dataset``: the arms by role and the unseen languages."""
    evaluated = data.runs[data.runs["run_id"].isin(data.metrics.loc[data.metrics["dataset"] == dataset, "run_id"])]
    zero_shot = evaluated.loc[evaluated["role"] == "zero-shot", "arm"].drop_duplicates().tolist()
    found = []
    for train, group in evaluated[evaluated["strategy"] != "zero-shot"].groupby("train", sort=True):
        roles = {row.role: row.arm for row in group.itertuples() if row.role is not None}
        roles.update({"zero-shot": zero_shot[0]} if zero_shot else {})
        found.append(Cohort(dataset, train, roles, unseen_languages(data, dataset, group)))
    return found


def unseen_languages(data: StudyData, dataset: str, runs: pd.DataFrame) -> list[str]:
    """Languages of ``dataset`` that no training dataset of ``runs`` has a question in (from dataset_versions)."""
    versions = data.versions[data.versions["run_id"].isin(runs["run_id"])]
    trained_on = {name for names in runs["train_datasets"] for name in names}
    evaluated = set(versions.loc[versions["dataset"] == dataset, "lang"])
    seen = set(versions.loc[versions["dataset"].isin(trained_on) & (versions["n_queries"] > 0), "lang"])
    return sorted(evaluated - seen)


def setting_value(value: object) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def dotted(config: dict, key: str) -> object:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def mean_of(data: StudyData, dataset: str, setting: str, arm: str | None, metric: str = "map") -> float | None:
    """The arm's mean over seeds of the setting value (``compare``'s arms table)."""
    arms = data.comparison.arms
    found = arms.loc[
        (arms["dataset"] == dataset) & (arms["setting"] == setting) & (arms["metric"] == metric) & (arms["arm"] == arm),
        "mean",
    ]
    return float(found.iloc[0]) if len(found) else None


def difference_of(
    data: StudyData, dataset: str, setting: str, arm: str, other: str, metric: str = "map"
) -> tuple[float, float] | None:
    """(mean of ``arm`` - mean of ``other``, its p-value Holm-corrected over the dataset's comparisons) from
    ``compare``'s paired tests; None if not tested."""
    rows = data.comparison.differences
    rows = rows[(rows["dataset"] == dataset) & (rows["setting"] == setting) & (rows["metric"] == metric)]
    for first, second, sign in [(arm, other, 1.0), (other, arm, -1.0)]:
        found = rows[(rows["arm"] == first) & (rows["other"] == second)]
        if len(found):
            return sign * float(found["difference"].iloc[0]), float(found["p_holm"].iloc[0])
    return None


def bias_means(data: StudyData, dataset: str) -> pd.DataFrame:
    """Per arm, the mean over query languages of rank_distance and same_lang_first_rate (index: arm)."""
    bias = data.comparison.bias
    means = bias[bias["dataset"] == dataset].groupby("arm")[["rank_distance", "same_lang_first_rate"]].mean()
    return means.reindex([arm for arm in arm_order(data.runs) if arm in means.index])


def unseen_map(data: StudyData, cohort: Cohort) -> pd.Series:
    """Per arm, the mean mAP over the language pairs of ``cohort.dataset`` whose query or corpus language is unseen
    in training (a multi pair, corpus 'all', counts by its query language): the arm's runs averaged per pair."""
    rows = data.metrics[data.metrics["dataset"] == cohort.dataset]
    unseen = rows["query_lang"].isin(cohort.unseen) | rows["corpus_lang"].isin(cohort.unseen)
    per_pair = rows[unseen].groupby(["arm", "setting", "query_lang", "corpus_lang"])["value"].mean()
    return per_pair.groupby("arm").mean()


def unseen_pair_count(data: StudyData, cohort: Cohort) -> int:
    rows = data.metrics[data.metrics["dataset"] == cohort.dataset]
    unseen = rows[rows["query_lang"].isin(cohort.unseen) | rows["corpus_lang"].isin(cohort.unseen)]
    return len(unseen[["setting", "query_lang", "corpus_lang"]].drop_duplicates())
