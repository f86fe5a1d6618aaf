"""A run's report: one markdown file and PNG plots, written from the run's metric frames.

    files = write_report(Path("reports") / run["run_id"], run, metrics, language_bias, train_curve)
    rows["artifacts"] = pd.DataFrame([{"kind": f.kind, "path": str(f.path), "sha256": f.sha256} for f in files])

``report.md`` holds, per dataset, the setting summary (mean over language pairs, as the ``run_summary`` view), the
language bias per query language and the X->Y mAP matrix; the plots are ``map_heatmap_<dataset>.png``,
``settings_<dataset>.png`` and, for a run with a train curve, ``loss.png``. The plots are written before the
markdown, so a crash never leaves a report that links to a missing plot.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

SETTINGS = ["mono", "cross", "multi"]
METRICS = ["map", "mrr@10", "recall@1", "recall@10", "recall@100", "ndcg@10"]
MISSING = "–"
DPI = 120


@dataclass(frozen=True)
class ReportFile:
    """One file of a report: ``kind`` is "report" for the markdown, "plot" for a PNG; ``sha256`` of its bytes."""

    kind: str
    path: Path
    sha256: str


def safe_name(name: str) -> str:
    """``name`` with every character outside [A-Za-z0-9._-] replaced by '_', for use in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def setting_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric over language pairs: rows mono/cross/multi, columns the six metrics (NaN if absent)."""
    summary = metrics.pivot_table(index="setting", columns="metric", values="value", aggfunc="mean")
    return summary.reindex(index=SETTINGS, columns=METRICS)


def map_matrix(metrics: pd.DataFrame) -> pd.DataFrame:
    """mAP per query language (rows) and corpus language (columns); the diagonal is mono, "pool" is multi."""
    map_rows = metrics[metrics["metric"] == "map"]
    langs = sorted((set(map_rows["query_lang"]) | set(map_rows["corpus_lang"])) - {"all"})
    pairs = map_rows[map_rows["setting"].isin(["mono", "cross"])]
    matrix = pairs.pivot_table(index="query_lang", columns="corpus_lang", values="value", aggfunc="mean")
    matrix = matrix.reindex(index=langs, columns=langs)
    pool = map_rows[map_rows["setting"] == "multi"].groupby("query_lang")["value"].mean()
    return matrix.assign(pool=pool)


def bias_table(language_bias: pd.DataFrame) -> pd.DataFrame:
    """Language bias per query language, plus a "mean" row: the macro-average of the rates, the total of queries."""
    table = language_bias.set_index("query_lang")[["rank_distance", "same_lang_first_rate", "n_queries"]]
    mean = table[["rank_distance", "same_lang_first_rate"]].mean().to_frame("mean").T
    table = pd.concat([table.sort_index(), mean.assign(n_queries=table["n_queries"].sum())])
    return table.astype({"n_queries": "Int64"})


def _cell(value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, index_name: str) -> list[str]:
    """``frame`` as markdown table lines, its index as the first column; floats with 3 decimals, NaN as "–"."""
    header = [index_name, *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in zip(frame.index, frame.itertuples(index=False), strict=True):
        lines.append("| " + " | ".join([str(label), *map(_cell, row)]) + " |")
    return lines


def plot_heatmap(matrix: pd.DataFrame, title: str, path: Path, vmax: float = 1.0) -> None:
    """The X->Y mAP matrix as an annotated heatmap: query language on y, corpus language on x; colours 0..vmax."""
    n, values = len(matrix), matrix.to_numpy(dtype=float)
    decimals = 3 if n <= 8 else 2  # 11 languages leave no room for a third
    fig = Figure(figsize=(2 + 0.6 * n, 1.5 + 0.6 * n))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=vmax)
    for (row, col), value in np.ndenumerate(values):
        if not np.isnan(value):  # dark cells get white text, bright ones black
            color = "white" if value < 0.6 * vmax else "black"
            ax.text(col, row, f"{value:.{decimals}f}", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n), matrix.columns)
    ax.set_yticks(range(n), matrix.index)
    ax.set(xlabel="corpus language", ylabel="query language", title=title)
    fig.colorbar(image, ax=ax, label="mAP")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def _plot_settings(summary: pd.DataFrame, title: str, path: Path) -> None:
    """Grouped bars: per metric, one bar each for the mono, cross and multi means."""
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    x = np.arange(len(summary.columns))
    width = 0.8 / len(summary.index)
    offsets = (np.arange(len(summary.index)) - (len(summary.index) - 1) / 2) * width  # centred on each metric
    for offset, (setting, means) in zip(offsets, summary.iterrows(), strict=True):
        ax.bar(x + offset, means.to_numpy(dtype=float), width, label=setting)
    ax.set_xticks(x, summary.columns)
    ax.set(ylabel="mean over language pairs", ylim=(0, 1), title=title)
    ax.legend(title="setting")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def _plot_loss(curve: pd.DataFrame, path: Path) -> None:
    """Loss per step coloured by batch kind, its moving average, and the learning rate on a second axis."""
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    for kind, color in [("mono", "tab:blue"), ("cross", "tab:orange")]:
        steps = curve[curve["batch_kind"] == kind]
        ax.scatter(steps["step"], steps["loss"], s=8, color=color, alpha=0.5, label=f"{kind} batch")
    window = int(np.clip(len(curve) // 20, 5, 50))
    average = curve["loss"].rolling(window, min_periods=1).mean()
    ax.plot(curve["step"], average, color="black", label=f"moving average ({window} steps)")
    ax.set(xlabel="step", ylabel="loss")
    lr_ax = ax.twinx()
    lr_ax.plot(curve["step"], curve["lr"], color="tab:green", linestyle="--", label="learning rate")
    lr_ax.set_ylabel("learning rate", color="tab:green")
    lr_ax.yaxis.set_major_formatter("{x:.1e}")  # no "1e-5" offset text, which the legend would cover
    handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    # above the axes: inside, it hides the first steps, where the loss is highest
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, frameon=False)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def _setup_lines(run: dict) -> list[str]:
    fields = [("model source", "model_source"), ("strategy", "strategy"), ("alpha", "alpha"), ("seed", "seed")]
    fields += [(label, key) for label, key in [("model dir", "model_dir"), ("seconds", "seconds")] if key in run]
    return [f"- kind: {_cell(run.get('kind'))}"] + [f"- {label}: {_cell(run.get(key))}" for label, key in fields]


def _curve_lines(curve: pd.DataFrame) -> list[str]:
    kinds = curve["batch_kind"].value_counts()
    return [
        "## Training",
        "",
        f"- steps: {len(curve)} (mono batches: {kinds.get('mono', 0)}, cross batches: {kinds.get('cross', 0)})",
        f"- mean loss, first 10 steps: {_cell(float(curve['loss'].head(10).mean()))}",
        f"- mean loss, last 10 steps: {_cell(float(curve['loss'].tail(10).mean()))}",
        "",
        "![training loss](loss.png)",
        "",
    ]


def _dataset_lines(
    out_dir: Path, dataset: str, metrics: pd.DataFrame, bias: pd.DataFrame
) -> tuple[list[str], list[Path]]:
    """The markdown section of one dataset, and the plots it links to (written here)."""
    summary, matrix = setting_summary(metrics), map_matrix(metrics)
    settings_png, heatmap_png = f"settings_{safe_name(dataset)}.png", f"map_heatmap_{safe_name(dataset)}.png"
    _plot_settings(summary, f"{dataset}: mean over language pairs", out_dir / settings_png)
    lines = [f"## {dataset}", "", "### Settings (mean over language pairs)", ""]
    lines += markdown_table(summary, "setting") + ["", f"![settings, {dataset}]({settings_png})", ""]
    lines += ["### Language bias (multi setting)", ""]
    lines += markdown_table(bias_table(bias), "query_lang") if len(bias) else ["No language-bias rows."]
    lines += ["", "### mAP, query language (rows) -> corpus language (columns); pool = multi", ""]
    if matrix.empty:
        return lines + ["No mono or cross mAP rows.", ""], [out_dir / settings_png]
    plot_heatmap(matrix.drop(columns="pool"), f"{dataset}: mAP X->Y", out_dir / heatmap_png)
    lines += markdown_table(matrix, "query_lang") + ["", f"![mAP heatmap, {dataset}]({heatmap_png})", ""]
    return lines, [out_dir / settings_png, out_dir / heatmap_png]


def write_report(
    out_dir: Path,
    run: dict,
    metrics: pd.DataFrame,
    language_bias: pd.DataFrame,
    train_curve: pd.DataFrame | None = None,
) -> list[ReportFile]:
    """Write ``report.md`` and its PNG plots into ``out_dir``; returns them, the markdown first, then the plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run {_cell(run.get('run_id'))}", "", *_setup_lines(run), ""]
    plots: list[Path] = []
    for dataset in metrics["dataset"].drop_duplicates() if len(metrics) else []:
        bias = language_bias[language_bias["dataset"] == dataset] if len(language_bias) else language_bias
        dataset_lines, dataset_plots = _dataset_lines(out_dir, dataset, metrics[metrics["dataset"] == dataset], bias)
        lines, plots = lines + dataset_lines, plots + dataset_plots
    if train_curve is not None and len(train_curve):
        curve = train_curve.sort_values("step")
        _plot_loss(curve, out_dir / "loss.png")
        lines, plots = lines + _curve_lines(curve), plots + [out_dir / "loss.png"]
    report = out_dir / "report.md"
    partial = out_dir / "report.md.partial"
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(partial, report)  # the plots it links to are on disk already
    return [_report_file("report", report)] + [_report_file("plot", path) for path in plots]


def _report_file(kind: str, path: Path) -> ReportFile:
    return ReportFile(kind, path, hashlib.sha256(path.read_bytes()).hexdigest())
