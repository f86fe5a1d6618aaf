"""Several studies in one results document: the same questions asked at different training budgets, side by side.

    studies = [load_study(db, compare_runs(db, study_id=s), s) for s in ("hybrid-vs-pure", "hybrid-vs-pure-converged")]
    files = write_studies_report(Path("docs/results.md"), studies)      # hbir report --study A --study B

The document opens with what differs between the studies (steps, batch, learning rate, dev split, CPU hours), the
mAP of every arm of each study next to each other (one table per evaluation dataset and training data), each claim's
verdict per study, and the paper's rows (``PAPER_ROWS``, arXiv 2408.10536 Table 1) as anchors against our hybrid
arms. Then each study's own document follows (``study.py``), its headings one level down and its plots in a folder
of its own (``docs/results/<study>/``), so nothing of a single-study report is lost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from hbir.core.files import write_text
from hbir.core.names import SETTINGS
from tasks.comparison import arm_name
from tasks.report.claims import claims
from tasks.report.markdown import MISSING, ReportFile, markdown_table, mean_std, safe_name
from tasks.report.plots import plot_budgets
from tasks.report.study import image_link, latex_tables, plots_folder, report_files, study_sections
from tasks.report.study_data import StudyData, arm_order, bias_means, cohorts, dotted, role_of, setting_value

# The paper's Table 1 (XQuAD-R; its models fine-tuned on large machine-translated QA data, batch 100, lr 3e-5): mAP
# per setting and, where it gives one, the mean rank distance. Anchors for our hybrid arms trained on MLQA-R.
PAPER_ROWS = {
    "XLM-R hybrid (paper)": {"mono": 0.798, "cross": 0.705, "multi": 0.593, "rank_distance": None},
    "LaBSE hybrid (paper)": {"mono": 0.817, "cross": 0.767, "multi": 0.682, "rank_distance": 221.1},
}
PAPER_DATASET, PAPER_TRAIN = "xquad-r", "mlqa-r"
PAPER_KEY = (PAPER_DATASET, PAPER_TRAIN)
ANCHOR = "XLM-R hybrid (paper)"  # the row the hybrid arms are checked against (issue 16's goal)
BUDGET_SETTINGS = ["train.steps", "train.batch_size", "train.lr", "data.dev_fraction", "train.select", "train.merge"]


def study_label(data: StudyData, studies: list[StudyData]) -> str:
    """ "50 steps" (the trained runs' train.steps) when that tells the studies apart, else the study id."""

    def steps(study: StudyData) -> str:
        trained = study.runs[study.runs["strategy"] != "zero-shot"]
        values = {setting_value(dotted(config, "train.steps")) for config in trained["config"]}
        return f"{values.pop()} steps" if len(values) == 1 else study.study_id

    labels = [steps(study) for study in studies]
    return steps(data) if len(set(labels)) == len(labels) else data.study_id


def budget_labels(studies: list[StudyData]) -> list[str]:
    return [study_label(data, studies) for data in studies]


def budget_table(studies: list[StudyData]) -> pd.DataFrame:
    """Per study: the training settings of its trained runs (several values: each, the most frequent first), its
    runs and their wall-clock hours."""
    rows = {}
    for data in studies:
        trained = data.runs[data.runs["strategy"] != "zero-shot"]
        row = {"study": data.study_id}
        for key in BUDGET_SETTINGS:
            values = trained["config"].map(lambda config, key=key: _setting(dotted(config, key))).value_counts()
            row[key] = ", ".join(values.index) if len(values) else MISSING
        row["runs"] = str(len(data.runs))
        row["hours"] = float(data.runs["minutes"].sum() / 60)
        rows[study_label(data, studies)] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _setting(value: object) -> str:
    return "none" if value is None else setting_value(value)


def _plain_arms(data: StudyData) -> pd.DataFrame:
    """Per arm of the study: its name without the training data (``mono``, ``hybrid a=0.5 merged auto``) and the
    data it trained on (None for zero-shot, which belongs to every training data)."""
    runs = data.runs.drop_duplicates("arm")
    return pd.DataFrame(
        {
            "arm": runs["arm"].to_numpy(),
            "plain": [arm_name(r.strategy, r.alpha, None, r.merge) for r in runs.itertuples()],
            "train": [None if r.strategy == "zero-shot" else r.train for r in runs.itertuples()],
        }
    )


def budget_rows(studies: list[StudyData], dataset: str, train: str) -> pd.DataFrame:
    """The mAP of the arms trained on ``train`` (and zero-shot) on ``dataset``, per study: arm (without the training
    data), budget (``study_label``), setting, mean, std, n_runs; arms in the first study's order, then those only
    later studies have."""
    frames, order = [], []
    for data in studies:
        arms = _plain_arms(data)
        arms = arms[(arms["train"] == train) | arms["train"].isna()]
        found = data.comparison.arms
        found = found[(found["dataset"] == dataset) & (found["metric"] == "map")].merge(arms, on="arm")
        ranked = {arm: i for i, arm in enumerate(arm_order(data.runs))}
        found = found.sort_values("arm", key=lambda arm: arm.map(ranked), kind="stable")
        order += [plain for plain in found["plain"].drop_duplicates() if plain not in order]
        frames.append(found.assign(budget=study_label(data, studies)))
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.assign(arm=pd.Categorical(rows["plain"], categories=order, ordered=True)).sort_values("arm")
    return rows.assign(arm=rows["arm"].astype(str))[["arm", "budget", "setting", "mean", "std", "n_runs"]]


def side_by_side(studies: list[StudyData], dataset: str, train: str) -> pd.DataFrame:
    """Arm (rows) x study and setting (columns): mAP "mean ± std" over seeds on ``dataset`` of the arms trained on
    ``train`` (and zero-shot), from ``budget_rows``."""
    rows = budget_rows(studies, dataset, train)
    order = list(dict.fromkeys(rows["arm"]))
    columns = {}
    for budget in budget_labels(studies):
        for setting in SETTINGS:
            cells = rows[(rows["budget"] == budget) & (rows["setting"] == setting)]
            columns[f"{budget}: {setting}"] = {
                row.arm: mean_std(row.mean, row.std, row.n_runs) for row in cells.itertuples()
            }
    return pd.DataFrame(
        {column: [cells.get(arm, MISSING) for arm in order] for column, cells in columns.items()}, index=order
    )


def verdict_table(studies: list[StudyData]) -> pd.DataFrame:
    """Claim (rows) x study and cohort (columns): each claim's verdict."""
    columns, titles = {}, {}
    for data in studies:
        for dataset in data.datasets:
            for cohort in cohorts(data, dataset):
                column = f"{study_label(data, studies)}: {dataset} (trained on {cohort.train})"
                found = claims(data, cohort)
                columns[column] = {claim.key: claim.verdict for claim in found}
                titles.update({claim.key: f"{claim.key} — {claim.title}" for claim in found})
    return pd.DataFrame(
        {column: [cells.get(key, MISSING) for key in titles] for column, cells in columns.items()},
        index=list(titles.values()),
    )


def anchor_table(studies: list[StudyData]) -> pd.DataFrame:
    """The paper's rows, then per study its zero-shot and its hybrid a=0.5 arms trained on MLQA-R (merged or not)
    on XQuAD-R: mAP per setting, mean rank distance, and whether the arm is at or above the XLM-R row everywhere."""
    rows = {
        name: {**values, "≥ XLM-R row": MISSING, "≥ zero-shot mono": MISSING} for name, values in PAPER_ROWS.items()
    }
    for data in studies:
        label = study_label(data, studies)
        arms = _plain_arms(data)
        runs = data.runs.drop_duplicates("arm")
        hybrid = [r.arm for r in runs.itertuples() if role_of(r.strategy, r.alpha) == "hybrid"]  # merged or not
        wanted = arms[arms["train"].isna() | ((arms["train"] == PAPER_TRAIN) & arms["arm"].isin(hybrid))]
        wanted = wanted.sort_values("train", na_position="first", kind="stable")  # zero-shot first
        found = data.comparison.arms
        found = found[(found["dataset"] == PAPER_DATASET) & (found["metric"] == "map")]
        bias = bias_means(data, PAPER_DATASET)["rank_distance"] if PAPER_DATASET in data.datasets else pd.Series()
        zero_shot = found.loc[(found["setting"] == "mono") & found["arm"].isin(arms.loc[arms["train"].isna(), "arm"])]
        zero_shot_mono = float(zero_shot["mean"].iloc[0]) if len(zero_shot) else None
        for row in wanted.itertuples():
            means = found[found["arm"] == row.arm].set_index("setting")["mean"]
            if means.empty:
                continue
            values = {setting: float(means[setting]) if setting in means else None for setting in SETTINGS}
            values["rank_distance"] = float(bias[row.arm]) if row.arm in bias.index else None
            anchor = PAPER_ROWS[ANCHOR]
            meets = all(values[s] is not None and values[s] >= anchor[s] for s in SETTINGS)
            values["≥ XLM-R row"] = "yes" if meets else "no"
            above = None if zero_shot_mono is None or values["mono"] is None else values["mono"] >= zero_shot_mono
            values["≥ zero-shot mono"] = MISSING if above is None or pd.isna(row.train) else ("yes" if above else "no")
            rows[f"{label}: {row.plain}"] = values
    return pd.DataFrame.from_dict(rows, orient="index")


def header_lines(studies: list[StudyData], db: str, now: datetime) -> list[str]:
    ids = " and ".join(data.study_id for data in studies)
    command = "hbir report " + " ".join(f"--study {data.study_id}" for data in studies)
    return [
        f"# Results of studies {ids}",
        "",
        f"Generated by `{command}` from `{Path(db).name}` on {now:%Y-%m-%d %H:%M} UTC. Do not edit by hand: every "
        "number comes from the results database; run the command again instead.",
        "",
    ]


def overview_lines(studies: list[StudyData], out: Path, folder: Path) -> tuple[list[str], list[Path]]:
    """The side-by-side section, and its plots (one per evaluation dataset and training data, written here)."""
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    lines = ["## The studies side by side", "", "What their trained runs were given (hours: the runs' wall time):", ""]
    lines += markdown_table(budget_table(studies), "budget") + [""]
    cohort_keys = sorted(
        {(dataset, cohort.train) for data in studies for dataset in data.datasets for cohort in cohorts(data, dataset)}
    )
    for dataset, train in cohort_keys:
        lines += [f"### mAP on {dataset}, trained on {train} (mean ± std over seeds)", ""]
        lines += markdown_table(side_by_side(studies, dataset, train), "arm") + [""]
        path = folder / f"budgets_{safe_name(dataset)}_{safe_name(train)}.png"
        anchors = dict(PAPER_ROWS) if (dataset, train) == PAPER_KEY else {}
        plot_budgets(budget_rows(studies, dataset, train), budget_labels(studies), anchors, dataset, path)
        lines += [image_link(path, out, f"mAP by budget, {dataset}, trained on {train}"), ""]
        plots.append(path)
    lines += ["### The paper's claims, per study", "", "Each verdict with its numbers is in the study's section.", ""]
    lines += markdown_table(verdict_table(studies), "claim") + [""]
    lines += [
        f"### Against the paper's rows ({PAPER_DATASET}, trained on {PAPER_TRAIN})",
        "",
        "The paper fine-tunes XLM-R and LaBSE (not retrieval models) on large machine-translated QA data; we "
        "fine-tune multilingual-e5-small, already trained for retrieval, on MLQA-R. mAP per setting; rank distance: "
        "mean over query languages, lower is better. '≥ XLM-R row': at or above the paper's XLM-R hybrid row in all "
        "three settings; '≥ zero-shot mono': at or above the untrained model in the monolingual setting. "
        "Merged arms were given their weight on the dev split, never on this data.",
        "",
    ]
    lines += markdown_table(anchor_table(studies), "model") + [""]
    return lines, plots


def demoted(lines: list[str]) -> list[str]:
    """Markdown headings one level down (``## Setup`` -> ``### Setup``)."""
    return [f"#{line}" if line.startswith("#") else line for line in lines]


def write_studies_report(
    out: Path, studies: list[StudyData], now: datetime | None = None, latex: bool = False
) -> list[ReportFile]:
    """Write one document for several studies (``out``, the markdown first among the files returned): the overview,
    then each study's sections with its plots in ``plots_folder(out)/<study>``; with ``latex`` every study's tables
    in ``<out>.tex``. Plots first, the markdown last and atomically, as for one study."""
    out = Path(out)
    overview, plots = overview_lines(studies, out, plots_folder(out))
    lines = header_lines(studies, studies[0].db, now or datetime.now(UTC)) + overview
    for data in studies:
        sections, written = study_sections(data, out, plots_folder(out) / safe_name(data.study_id))
        lines += [f"## Study {data.study_id}", ""] + demoted(sections)
        plots += written
    tables = []
    if latex:
        tables = [write_text(out.with_suffix(".tex"), "\n\n".join(latex_tables(data) for data in studies))]
    write_text(out, "\n".join(lines).rstrip("\n") + "\n")
    return report_files(out, plots, tables)
