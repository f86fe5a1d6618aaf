"""A study's results document: one markdown file and its PNG plots, computed from the results database alone.

    comparison = compare(db, study_id="hybrid-vs-pure", permutations=10_000)
    files = write_study_report(Path("docs/results.md"), load_study(db, comparison, "hybrid-vs-pure"))

The document (``hbir report --study ID``) has the setup (shared settings, the runs, the languages unseen in
training), per evaluation dataset the mAP of every arm and setting (mean ± std over seeds), all metrics, the
differences between arms with their p-values (``hbir.compare``), the language bias and the X->Y mAP heatmaps, the
loss curves, and a verdict on each of the paper's four claims with the numbers behind it. Plots go in a folder next
to the markdown (``docs/results.md`` -> ``docs/results/``); they are written first and the markdown last, through a
temporary file, so a crash never leaves a document that links to a missing plot.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hbir.compare import SETTINGS, Comparison
from tasks import store
from tasks.report import DPI, METRICS, MISSING, ReportFile, map_matrix, markdown_table, plot_heatmap, safe_name

SHARED_SETTINGS = [
    "model.source",
    "train.steps",
    "train.batch_size",
    "train.lr",
    "train.temperature",
    "model.max_length",
    "data.train",
    "data.eval",
    "eval.candidates",
]
ROLES = ("zero-shot", "mono", "cross", "hybrid")  # the arms the claims speak of; other alphas are extra
ROLE_LABELS = {"zero-shot": "zero-shot", "mono": "mono", "cross": "cross", "hybrid": "hybrid (a=0.5)"}
HYBRID_ALPHA = 0.5  # the paper's hybrid arm
SIGNIFICANCE = 0.05  # a difference with p below this is called significant
CLOSE_GAP = 0.01  # C2: hybrid is "close to the best" when it trails it by less than this much mAP
LAST_STEPS = 10  # the final loss: mean over the last training steps
SMOOTHING = 5  # loss curves: rolling mean over this many steps
HOLDS, FAILS, UNCHECKED = "holds", "does not hold", "cannot be checked"


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


@dataclass(frozen=True)
class Claim:
    key: str  # C1 .. C4
    title: str
    verdict: str  # holds | does not hold | cannot be checked
    text: str


# ---------------------------------------------------------------------------------------------------- reading


def load_study(db: str, comparison: Comparison, study_id: str, lock_timeout_s: float = 60.0) -> StudyData:
    """The rows of the compared runs that the document needs, read-only from ``db``."""
    ids = comparison.runs["run_id"].tolist()
    arms = comparison.runs[["run_id", "arm"]]
    with store.connect(db, read_only=True, lock_timeout_s=lock_timeout_s) as connection:

        def read(sql: str) -> pd.DataFrame:
            return connection.execute(sql, [ids]).df()

        runs = read("SELECT run_id, config, device, git_revision, started_at, finished_at FROM runs WHERE run_id IN ?")
        losses = read(
            "SELECT run_id, avg(loss) AS final_loss FROM (SELECT run_id, loss, row_number() OVER "
            "(PARTITION BY run_id ORDER BY step DESC) AS n FROM train_steps WHERE run_id IN ?) "
            f"WHERE n <= {LAST_STEPS} GROUP BY run_id"
        )
        metrics = read(
            "SELECT run_id, dataset, setting, query_lang, corpus_lang, value FROM metrics "
            "WHERE run_id IN ? AND metric = 'map'"
        )
        versions = read("SELECT run_id, dataset, lang, n_queries FROM dataset_versions WHERE run_id IN ?")
        steps = read("SELECT run_id, step, loss FROM train_steps WHERE run_id IN ? ORDER BY run_id, step")
    return StudyData(
        study_id,
        db,
        comparison,
        _run_table(comparison.runs, runs, losses),
        metrics.merge(arms),
        versions,
        steps.merge(arms),
    )


def _run_table(compared: pd.DataFrame, runs: pd.DataFrame, losses: pd.DataFrame) -> pd.DataFrame:
    configs = runs["config"].map(json.loads)
    runs = runs.assign(
        config=configs,
        train_datasets=configs.map(lambda config: list(config["data"]["train"])),
        eval=configs.map(lambda config: "+".join(config["data"]["eval"])),
        minutes=(runs["finished_at"] - runs["started_at"]).dt.total_seconds() / 60,
    )
    table = compared.merge(runs, on="run_id").merge(losses, on="run_id", how="left")
    table["role"] = [role_of(row.strategy, row.alpha) for row in table.itertuples()]
    return table


def role_of(strategy: str, alpha: float | None) -> str | None:
    """The part an arm plays in the paper's claims: zero-shot, mono, cross, hybrid (a=0.5); None for other alphas."""
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
    )
    return keyed.sort_values(["_zero", "train", "_role", "_alpha"])["arm"].drop_duplicates().tolist()


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


# ---------------------------------------------------------------------------------------------------- numbers


def fmt(value: float | None) -> str:
    """A number with 3 decimals; "–" when there is none."""
    return MISSING if value is None or pd.isna(value) else f"{value:.3f}"


def fmt_signed(value: float) -> str:
    return f"{value:+.3f}"


def _p_relation(p_text: str) -> str:
    """ "= 0.0021" or "< 0.0001": a p-value after "p"."""
    return p_text if p_text.startswith("<") else f"= {p_text}"


def fmt_p(p_value: float | None, permutations: int | None) -> str:
    """A p-value with 4 significant digits; at the floor of the test (1 / (1 + permutations)) "< bound", the floor
    rounded up to one significant digit (10 000 permutations: "< 0.0001")."""
    if p_value is None or pd.isna(p_value):
        return MISSING
    floor = 1 / (1 + permutations) if permutations else 0.0
    if floor and p_value <= floor * (1 + 1e-9):
        exponent = math.floor(math.log10(floor))
        digit = math.ceil(floor / 10**exponent - 1e-9)
        exponent, digit = (exponent + 1, 1) if digit == 10 else (exponent, digit)
        return f"< {digit * 10.0**exponent:.{max(0, -exponent)}f}"
    return f"{p_value:.4g}"


def _setting_value(value: object) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _dotted(config: dict, key: str) -> object:
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


def difference_of(data: StudyData, dataset: str, setting: str, arm: str, other: str) -> tuple[float, float] | None:
    """(mean of ``arm`` - mean of ``other``, p-value) in mAP, from ``compare``'s paired tests; None if not tested."""
    rows = data.comparison.differences
    rows = rows[(rows["dataset"] == dataset) & (rows["setting"] == setting) & (rows["metric"] == "map")]
    for first, second, sign in [(arm, other, 1.0), (other, arm, -1.0)]:
        found = rows[(rows["arm"] == first) & (rows["other"] == second)]
        if len(found):
            return sign * float(found["difference"].iloc[0]), float(found["p_value"].iloc[0])
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


# ---------------------------------------------------------------------------------------------------- claims


def claims(data: StudyData, cohort: Cohort) -> list[Claim]:
    """The paper's four claims checked on one cohort, each with its verdict and the numbers behind it."""
    checks = (claim_multilingual, claim_close, claim_bias, claim_unseen)
    return [check(data, cohort) for check in checks]


def _missing(cohort: Cohort, needed: tuple[str, ...]) -> list[str]:
    return [role for role in needed if role not in cohort.roles]


def _unchecked(key: str, title: str, missing: list[str], known: str = "") -> Claim:
    arms = ", ".join(f"'{ROLE_LABELS[role]}'" for role in missing)
    text = f"Cannot be checked: the study has no {arms} arm for this dataset."
    return Claim(key, title, UNCHECKED, f"{text} {known}".strip())


def _versus(data: StudyData, cohort: Cohort, setting: str, role: str, other: str) -> str:
    """ "hybrid (a=0.5) − mono = +0.012 (p = 0.0021, significant at 0.05)"."""
    label = f"{ROLE_LABELS[role]} − {ROLE_LABELS[other]}"
    found = difference_of(data, cohort.dataset, setting, cohort.roles[role], cohort.roles[other])
    if found is None:
        first, second = (mean_of(data, cohort.dataset, setting, cohort.roles[r]) for r in (role, other))
        return f"{label} = {fmt_signed(first - second)} (not tested)" if None not in (first, second) else label
    difference, p_value = found
    significant = "significant" if p_value < SIGNIFICANCE else "not significant"
    p_text = _p_relation(fmt_p(p_value, data.permutations))
    return f"{label} = {fmt_signed(difference)} (p {p_text}, {significant} at {SIGNIFICANCE})"


def _means_text(data: StudyData, cohort: Cohort, setting: str, roles: tuple[str, ...]) -> str:
    present = [role for role in roles if role in cohort.roles]
    return ", ".join(
        f"{ROLE_LABELS[role]} {fmt(mean_of(data, cohort.dataset, setting, cohort.roles[role]))}" for role in present
    )


def claim_multilingual(data: StudyData, cohort: Cohort) -> Claim:
    """C1: hybrid batches give the best multilingual (setting multi) mAP: higher than mono's and cross's."""
    key, title = "C1", "hybrid batches give the best multilingual mAP"
    known = f"Multilingual mAP: {_means_text(data, cohort, 'multi', ('hybrid', 'mono', 'cross'))}."
    missing = _missing(cohort, ("hybrid", "mono", "cross"))
    if missing:
        return _unchecked(key, title, missing, known)
    means = {role: mean_of(data, cohort.dataset, "multi", cohort.roles[role]) for role in ("hybrid", "mono", "cross")}
    holds = means["hybrid"] > means["mono"] and means["hybrid"] > means["cross"]
    versus = "; ".join(_versus(data, cohort, "multi", "hybrid", other) for other in ("mono", "cross"))
    return Claim(key, title, HOLDS if holds else FAILS, f"{known} {versus}.")


def claim_close(data: StudyData, cohort: Cohort) -> Claim:
    """C2: in the mono and cross settings hybrid is the best of {mono, cross, hybrid} or trails it by < CLOSE_GAP."""
    key, title = "C2", "hybrid stays close to the best in the monolingual and cross-lingual settings"
    needed = ("hybrid", "mono", "cross")
    known = " ".join(
        f"{setting.capitalize()} mAP: {_means_text(data, cohort, setting, needed)}." for setting in SETTINGS[:2]
    )
    missing = _missing(cohort, needed)
    if missing:
        return _unchecked(key, title, missing, known)
    parts = [_closeness(data, cohort, setting) for setting in ("mono", "cross")]
    holds = all(close for close, _ in parts)
    text = f"{known} Threshold: hybrid within {CLOSE_GAP} mAP of the best arm. " + ". ".join(t for _, t in parts) + "."
    return Claim(key, title, HOLDS if holds else FAILS, text)


def _closeness(data: StudyData, cohort: Cohort, setting: str) -> tuple[bool, str]:
    """Whether hybrid is the best of {mono, cross, hybrid} in ``setting`` or within CLOSE_GAP of it, and why."""
    means = {role: mean_of(data, cohort.dataset, setting, cohort.roles[role]) for role in ("hybrid", "mono", "cross")}
    best, runner_up = sorted(means, key=lambda role: means[role], reverse=True)[:2]
    if best == "hybrid":  # the p-value then says whether its lead over the next arm is real
        return True, (
            f"In the {setting} setting hybrid is the best ({fmt(means['hybrid'])}); "
            f"{_versus(data, cohort, setting, 'hybrid', runner_up)}"
        )
    gap = means[best] - means["hybrid"]
    return gap < CLOSE_GAP, (
        f"In the {setting} setting {ROLE_LABELS[best]} is the best ({fmt(means[best])}) and hybrid trails it by "
        f"{fmt(gap)}, {'below' if gap < CLOSE_GAP else 'not below'} the threshold; "
        f"{_versus(data, cohort, setting, 'hybrid', best)}"
    )


def claim_bias(data: StudyData, cohort: Cohort) -> Claim:
    """C3: hybrid's mean rank distance (over query languages) is lower than mono's and cross's."""
    key, title = "C3", "hybrid reduces language bias"
    means = bias_means(data, cohort.dataset)
    present = [role for role in ("hybrid", "mono", "cross", "zero-shot") if cohort.roles.get(role) in means.index]
    distances = {role: float(means.loc[cohort.roles[role], "rank_distance"]) for role in present}
    firsts = {role: float(means.loc[cohort.roles[role], "same_lang_first_rate"]) for role in present}
    known = (
        "Mean rank distance over query languages (lower is better): "
        + ", ".join(f"{ROLE_LABELS[role]} {fmt(distances[role])}" for role in present)
        + "; same-language-first rate: "
        + ", ".join(f"{ROLE_LABELS[role]} {fmt(firsts[role])}" for role in present)
        + "."
    )
    missing = [role for role in ("hybrid", "mono", "cross") if role not in present]
    if missing:
        return _unchecked(key, title, missing, known if present else "")
    holds = distances["hybrid"] < distances["mono"] and distances["hybrid"] < distances["cross"]
    by = ", ".join(
        f"hybrid − {other} = {fmt_signed(distances['hybrid'] - distances[other])}" for other in ("mono", "cross")
    )
    text = f"{known} Rank distance {by} (negative: less bias than that arm)."
    return Claim(key, title, HOLDS if holds else FAILS, text)


def claim_unseen(data: StudyData, cohort: Cohort) -> Claim:
    """C4: on pairs with a language unseen in training, hybrid beats zero-shot and is not below mono and cross."""
    key, title = "C4", "hybrid generalises zero-shot to languages unseen in training"
    if not cohort.unseen:
        return Claim(
            key,
            title,
            UNCHECKED,
            f"Cannot be checked here: every evaluation language of {cohort.dataset} is in the training data "
            f"({cohort.train}), so no language is unseen.",
        )
    means = unseen_map(data, cohort)
    needed = ("hybrid", "zero-shot", "mono", "cross")
    present = [role for role in needed if cohort.roles.get(role) in means.index]
    known = (
        f"Unseen in training: {', '.join(cohort.unseen)}; mean mAP over the {unseen_pair_count(data, cohort)} "
        "language pairs with an unseen query or corpus language: "
        + ", ".join(f"{ROLE_LABELS[role]} {fmt(means[cohort.roles[role]])}" for role in present)
        + "."
    )
    missing = [role for role in needed if role not in present]
    if missing:
        return _unchecked(key, title, missing, known)
    hybrid = means[cohort.roles["hybrid"]]
    gains = {role: hybrid - means[cohort.roles[role]] for role in ("zero-shot", "mono", "cross")}
    holds = gains["zero-shot"] > 0 and gains["mono"] >= 0 and gains["cross"] >= 0
    by = ", ".join(f"{fmt_signed(gain)} over {ROLE_LABELS[role]}" for role, gain in gains.items())
    return Claim(key, title, HOLDS if holds else FAILS, f"{known} Hybrid: {by}.")


# ---------------------------------------------------------------------------------------------------- plots


def _bars(ax, groups: list[str], series: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (label -> values, error bars)."""
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (label, (values, errors)) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(x + offset, values, width, yerr=errors, capsize=3 if errors is not None else 0, label=label)
    ax.set_xticks(x, groups)
    ax.legend(title="arm", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_map_bars(arms: pd.DataFrame, order: list[str], title: str, path: Path) -> None:
    """mAP per setting (groups) and arm (bars), error bars one std over seeds."""
    rows = arms[arms["metric"] == "map"]
    series = {}
    for arm in [arm for arm in order if arm in set(rows["arm"])]:
        by_setting = rows[rows["arm"] == arm].set_index("setting").reindex(SETTINGS)
        series[arm] = (by_setting["mean"].to_numpy(float), by_setting["std"].fillna(0.0).to_numpy(float))
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    _bars(ax, SETTINGS, series)
    ax.set(ylabel="mAP (mean over seeds)", title=title)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def plot_bias(bias: pd.DataFrame, order: list[str], title: str, path: Path) -> None:
    """Rank distance per query language (groups) and arm (bars)."""
    langs = sorted(bias["query_lang"].unique())
    series = {
        arm: (bias[bias["arm"] == arm].set_index("query_lang")["rank_distance"].reindex(langs).to_numpy(float), None)
        for arm in order
        if arm in set(bias["arm"])
    }
    fig = Figure(figsize=(max(6, 1.2 * len(langs)), 4))
    ax = fig.add_subplot()
    _bars(ax, langs, series)
    ax.set(xlabel="query language", ylabel="rank distance (lower is better)", title=title)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def plot_loss(steps: pd.DataFrame, order: list[str], path: Path) -> None:
    """Per arm, the loss by step averaged over the arm's runs, as a rolling mean over SMOOTHING steps."""
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    for arm in [arm for arm in order if arm in set(steps["arm"])]:
        curve = steps[steps["arm"] == arm].groupby("step")["loss"].mean().sort_index()
        ax.plot(curve.index, curve.rolling(SMOOTHING, min_periods=1).mean(), label=arm)
    ax.set(xlabel="step", ylabel=f"loss (mean over seeds, rolling mean of {SMOOTHING})", title="training loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(title="arm", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


# ---------------------------------------------------------------------------------------------------- markdown


def plots_folder(out: Path) -> Path:
    """Where the plots of ``out`` go: docs/results.md -> docs/results/ (a name without suffix gets "-plots")."""
    return out.with_suffix("") if out.suffix else out.with_name(f"{out.name}-plots")


def header_lines(data: StudyData, now: datetime) -> list[str]:
    return [
        f"# Results of study {data.study_id}",
        "",
        f"Generated by `hbir report --study {data.study_id}` from `{Path(data.db).name}` on {now:%Y-%m-%d %H:%M} UTC. "
        "Do not edit by hand: every number comes from the results database; run the command again instead.",
        "",
    ]


def setup_lines(data: StudyData) -> list[str]:
    """Shared settings, the table of runs and, per evaluation dataset, the languages unseen in training."""
    runs, lines = data.runs, ["## Setup", "", "Settings shared by the runs (from their configuration):", ""]
    trained = runs[runs["strategy"] != "zero-shot"]
    for key in SHARED_SETTINGS:
        training = key.startswith("train.") or key == "data.train"  # zero-shot runs train nothing
        source = trained if training and len(trained) else runs
        counts = source["config"].map(lambda config, key=key: _setting_value(_dotted(config, key))).value_counts()
        value = counts.index[0] if len(counts) == 1 else ", ".join(f"{v} ({_runs(n)})" for v, n in counts.items())
        lines.append(f"- {key}: {value}")
    if len(trained) < len(runs):
        lines.append("- zero-shot runs: the untrained model.source (train.steps 0)")
    lines += ["", "### Runs", ""] + markdown_table(_runs_frame(data), "run_id") + [""]
    lines += [
        f"Loss: mean over the last {LAST_STEPS} training steps; minutes: from start to finish of the run "
        "(for a run that was stopped and resumed, the time in between included).",
        "",
    ]
    lines += ["### Languages", ""]
    for dataset in data.datasets:
        for cohort in cohorts(data, dataset):
            unseen = ", ".join(cohort.unseen) if cohort.unseen else "none"
            lines.append(f"- {dataset}, trained on {cohort.train}: evaluation languages absent from training: {unseen}")
    return lines + [""]


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _runs_frame(data: StudyData) -> pd.DataFrame:
    order = {arm: i for i, arm in enumerate(arm_order(data.runs))}
    runs = data.runs.assign(_order=data.runs["arm"].map(order)).sort_values(["_order", "seed", "run_id"])
    frame = pd.DataFrame(
        {
            "arm": runs["arm"],
            "seed": runs["seed"].map(lambda seed: MISSING if pd.isna(seed) else str(int(seed))),
            "train": runs["train"].where(runs["strategy"] != "zero-shot", MISSING),
            "eval": runs["eval"],
            "device": runs["device"],
            "git revision": runs["git_revision"].map(lambda rev: rev[:10] if isinstance(rev, str) else MISSING),
            "minutes": runs["minutes"].astype(float),
            "loss": runs["final_loss"].astype(float),
        }
    )
    return frame.set_index(runs["run_id"])


def arms_table(data: StudyData, dataset: str) -> pd.DataFrame:
    """Arm x setting: mAP "mean ± std" over seeds (the std only for arms with more than one run)."""
    rows = data.comparison.arms
    rows = rows[(rows["dataset"] == dataset) & (rows["metric"] == "map")]
    cells = {
        (row.arm, row.setting): fmt(row.mean) + (f" ± {fmt(row.std)}" if row.n_runs > 1 else "")
        for row in rows.itertuples()
    }
    arms = [arm for arm in arm_order(data.runs) if arm in set(rows["arm"])]
    table = pd.DataFrame({s: [cells.get((arm, s), MISSING) for arm in arms] for s in SETTINGS}, index=arms)
    return table.assign(runs=[str(int(rows.loc[rows["arm"] == arm, "n_runs"].max())) for arm in arms])


def metrics_table(data: StudyData, dataset: str) -> pd.DataFrame:
    """Arm and setting x the six metrics: mean over seeds."""
    rows = data.comparison.arms[data.comparison.arms["dataset"] == dataset]
    table = rows.pivot_table(index=["arm", "setting"], columns="metric", values="mean", aggfunc="first")
    arms = [arm for arm in arm_order(data.runs) if arm in set(rows["arm"])]
    index = pd.MultiIndex.from_product([arms, SETTINGS], names=["arm", "setting"])
    table = table.reindex(index=index, columns=[m for m in METRICS if m in table.columns]).dropna(how="all")
    return table.reset_index(level="setting")


def differences_table(data: StudyData, dataset: str) -> pd.DataFrame:
    rows = data.comparison.differences
    rows = rows[(rows["dataset"] == dataset) & (rows["metric"] == "map")]
    return pd.DataFrame(
        {
            "arm": rows["arm"].to_numpy(),
            "other": rows["other"].to_numpy(),
            "difference": rows["difference"].to_numpy(float),
            "p-value": [fmt_p(p, data.permutations) for p in rows["p_value"]],
            "queries": [str(n) for n in rows["n_queries"]],
        },
        index=rows["setting"].to_numpy(),
    )


def _link(path: Path, out: Path, text: str) -> str:
    return f"![{text}]({path.relative_to(out.parent).as_posix()})"


def dataset_lines(data: StudyData, dataset: str, out: Path, folder: Path) -> tuple[list[str], list[Path]]:
    """The results section of one evaluation dataset, and the plots it links to (written here)."""
    order, name = arm_order(data.runs), safe_name(dataset)
    bars = folder / f"map_{name}.png"
    plot_map_bars(data.comparison.arms[data.comparison.arms["dataset"] == dataset], order, f"{dataset}: mAP", bars)
    lines = [f"## Results on {dataset}", "", "### mAP by setting and arm (mean ± std over seeds)", ""]
    lines += markdown_table(arms_table(data, dataset), "arm") + ["", _link(bars, out, f"mAP, {dataset}"), ""]
    lines += ["### All metrics (mean over seeds of the mean over language pairs)", ""]
    lines += markdown_table(metrics_table(data, dataset), "arm") + [""]
    lines += ["### Differences in mAP", ""]
    table = differences_table(data, dataset)
    if len(table):
        lines += [
            f"Difference = arm − other; p-value of a two-sided paired randomisation test ({data.permutations} random "
            "sign flips), the unit being the query and each arm's runs averaged per query. The test is over queries "
            "with the trained models as they are: the spread between seeds is the ± of the mAP table, not part of "
            "the p-value.",
            "",
        ]
        lines += markdown_table(table, "setting") + [""]
    else:
        lines += ["No two arms to compare.", ""]
    bias_lines, bias_plots = _bias_lines(data, dataset, out, folder)
    heatmap_lines, heatmaps = _heatmap_lines(data, dataset, out, folder)
    return lines + bias_lines + heatmap_lines, [bars, *bias_plots, *heatmaps]


def _bias_lines(data: StudyData, dataset: str, out: Path, folder: Path) -> tuple[list[str], list[Path]]:
    lines = ["### Language bias (multilingual setting)", ""]
    bias = data.comparison.bias[data.comparison.bias["dataset"] == dataset]
    if bias.empty:
        return lines + ["No language-bias rows.", ""], []
    path = folder / f"bias_{safe_name(dataset)}.png"
    plot_bias(bias, arm_order(data.runs), f"{dataset}: rank distance per query language", path)
    lines += ["Mean over query languages; rank distance: lower is better.", ""]
    lines += markdown_table(bias_means(data, dataset), "arm") + ["", _link(path, out, f"language bias, {dataset}"), ""]
    return lines, [path]


def _heatmap_lines(data: StudyData, dataset: str, out: Path, folder: Path) -> tuple[list[str], list[Path]]:
    rows = data.metrics[data.metrics["dataset"] == dataset].assign(metric="map")
    matrices = {
        arm: map_matrix(rows[rows["arm"] == arm]).drop(columns="pool")
        for arm in arm_order(data.runs)
        if arm in set(rows["arm"])
    }
    matrices = {arm: matrix for arm, matrix in matrices.items() if matrix.notna().any().any()}
    lines = ["### mAP, query language (rows) -> corpus language (columns), mean over the arm's runs", ""]
    if not matrices:
        return lines + ["No mono or cross mAP rows.", ""], []
    vmax = max(float(np.nanmax(matrix.to_numpy(float))) for matrix in matrices.values()) or 1.0
    paths = []
    for arm, matrix in matrices.items():
        path = folder / f"heatmap_{safe_name(dataset)}_{safe_name(arm)}.png"
        plot_heatmap(matrix, f"{dataset}, {arm}: mAP X->Y", path, vmax)
        lines += [f"{arm}:", "", _link(path, out, f"mAP X->Y, {dataset}, {arm}"), ""]
        paths.append(path)
    return lines, paths


def loss_lines(data: StudyData, out: Path, folder: Path) -> tuple[list[str], list[Path]]:
    if data.steps.empty:
        return [], []
    path = folder / "loss.png"
    plot_loss(data.steps, arm_order(data.runs), path)
    return ["## Training loss", "", _link(path, out, "training loss per arm"), ""], [path]


def claims_lines(data: StudyData) -> list[str]:
    lines = ["## The claims", ""]
    lines += [
        "The four claims of the paper (arXiv 2408.10536), checked on this study's numbers: 'hybrid' is the arm with "
        f"alpha {HYBRID_ALPHA:g}, 'mono' and 'cross' the pure strategies, 'zero-shot' the untrained model; "
        f"differences are called significant when p < {SIGNIFICANCE}. Verdicts compare the unrounded numbers.",
        "",
    ]
    for dataset in data.datasets:
        found = cohorts(data, dataset)
        if not found:
            lines += [f"### {dataset}", "", "No trained run was evaluated on it: no claim can be checked.", ""]
        for cohort in found:
            lines += [f"### {dataset} (trained on {cohort.train})", ""]
            for claim in claims(data, cohort):
                lines += [f"**{claim.key} — {claim.title}: {claim.verdict}.** {claim.text}", ""]
    return lines


def write_study_report(out: Path, data: StudyData, now: datetime | None = None) -> list[ReportFile]:
    """Write the results document ``out`` and its plots (in ``plots_folder(out)``); returns them, the markdown
    first. The plots are written first and the markdown last, atomically."""
    out = Path(out)
    folder = plots_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    lines = header_lines(data, now or datetime.now(UTC)) + setup_lines(data)
    plots: list[Path] = []
    for dataset in data.datasets:
        section, written = dataset_lines(data, dataset, out, folder)
        lines, plots = lines + section, plots + written
    section, written = loss_lines(data, out, folder)
    lines, plots = lines + section + claims_lines(data), plots + written
    partial = out.with_name(f"{out.name}.partial")
    partial.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    os.replace(partial, out)  # the plots it links to are on disk already
    return [_report_file("report", out)] + [_report_file("plot", path) for path in plots]


def _report_file(kind: str, path: Path) -> ReportFile:
    return ReportFile(kind, path, hashlib.sha256(path.read_bytes()).hexdigest())
