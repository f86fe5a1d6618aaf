"""A run's report: one markdown file and PNG plots, written from the run's metric frames.

    files = write_report(Path("reports") / run["run_id"], run, metrics, language_bias, train_curve)
    rows["artifacts"] = pd.DataFrame([{"kind": f.kind, "path": str(f.path), "sha256": f.sha256} for f in files])

``report.md`` holds, per dataset, the setting summary (mean over language pairs, as the ``run_summary`` view), the
language bias per query language and the X->Y mAP matrix; the plots are ``map_heatmap_<dataset>.png``,
``settings_<dataset>.png`` and, for a run with a train curve, ``loss.png``. The plots are written before the
markdown, so a crash never leaves a report that links to a missing plot.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hbir.core.files import write_text
from hbir.core.names import METRICS, SETTINGS
from tasks.report.markdown import ReportFile, cell, markdown_table, report_file, safe_name
from tasks.report.plots import plot_dev_curves, plot_heatmap, plot_loss_curve, plot_settings


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


def _setup_lines(run: dict) -> list[str]:
    fields = [("model source", "model_source"), ("strategy", "strategy"), ("alpha", "alpha"), ("seed", "seed")]
    fields += [(label, key) for label, key in [("model dir", "model_dir"), ("seconds", "seconds")] if key in run]
    return [f"- kind: {cell(run.get('kind'))}"] + [f"- {label}: {cell(run.get(key))}" for label, key in fields]


def _curve_lines(curve: pd.DataFrame) -> list[str]:
    kinds = curve["batch_kind"].value_counts()
    return [
        "## Training",
        "",
        f"- steps: {len(curve)} (mono batches: {kinds.get('mono', 0)}, cross batches: {kinds.get('cross', 0)})",
        f"- mean loss, first 10 steps: {cell(float(curve['loss'].head(10).mean()))}",
        f"- mean loss, last 10 steps: {cell(float(curve['loss'].tail(10).mean()))}",
        "",
        "![training loss](loss.png)",
        "",
    ]


def dev_table(dev_curve: pd.DataFrame) -> pd.DataFrame:
    """Dev mAP by step (rows) and setting (columns), the mean over the dev datasets."""
    maps = dev_curve[dev_curve["metric"] == "map"]
    table = maps.pivot_table(index="step", columns="setting", values="value", aggfunc="mean")
    return table.reindex(columns=[s for s in SETTINGS if s in table.columns])


def _dev_lines(dev_curve: pd.DataFrame, selected_step: object) -> list[str]:
    selected = "the last step" if pd.isna(selected_step) else f"step {int(selected_step)}"
    return [
        "## Learning curves (dev split)",
        "",
        f"Dev mAP after each evaluated step; the run's model has the weights of {selected}.",
        "",
        *markdown_table(dev_table(dev_curve), "step"),
        "",
        "![dev mAP by step](dev_map.png)",
        "",
    ]


def _dataset_lines(
    out_dir: Path, dataset: str, metrics: pd.DataFrame, bias: pd.DataFrame
) -> tuple[list[str], list[Path]]:
    """The markdown section of one dataset, and the plots it links to (written here)."""
    summary, matrix = setting_summary(metrics), map_matrix(metrics)
    settings_png, heatmap_png = f"settings_{safe_name(dataset)}.png", f"map_heatmap_{safe_name(dataset)}.png"
    plot_settings(summary, f"{dataset}: mean over language pairs", out_dir / settings_png)
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
    dev_curve: pd.DataFrame | None = None,
) -> list[ReportFile]:
    """Write ``report.md`` and its PNG plots into ``out_dir``; returns them, the markdown first, then the plots.
    ``dev_curve``: the run's ``dev_metrics`` rows (learning curves), when it measured a dev split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run {cell(run.get('run_id'))}", "", *_setup_lines(run), ""]
    plots: list[Path] = []
    for dataset in metrics["dataset"].drop_duplicates() if len(metrics) else []:
        bias = language_bias[language_bias["dataset"] == dataset] if len(language_bias) else language_bias
        dataset_lines, dataset_plots = _dataset_lines(out_dir, dataset, metrics[metrics["dataset"] == dataset], bias)
        lines, plots = lines + dataset_lines, plots + dataset_plots
    if train_curve is not None and len(train_curve):
        curve = train_curve.sort_values("step")
        plot_loss_curve(curve, out_dir / "loss.png")
        lines, plots = lines + _curve_lines(curve), plots + [out_dir / "loss.png"]
    if dev_curve is not None and len(dev_curve):
        plot_dev_curves(dev_curve, run.get("selected_step"), out_dir / "dev_map.png")
        lines, plots = lines + _dev_lines(dev_curve, run.get("selected_step")), plots + [out_dir / "dev_map.png"]
    report = write_text(out_dir / "report.md", "\n".join(lines) + "\n")  # the plots it links to are on disk already
    return [report_file("report", report)] + [report_file("plot", path) for path in plots]
