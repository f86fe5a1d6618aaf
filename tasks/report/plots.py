"""The reports' plots (matplotlib, no global state): heatmaps, grouped bars and loss curves, each saved as a PNG at
300 dpi (what the markdown shows) and an SVG beside it (for papers: vector, any size). Legends sit outside the axes,
so they never cover data; heatmap colours span the data, not 0..1; a difference view diverges around 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from hbir.core.names import SETTINGS

DPI = 300
SMOOTHING = 5  # study loss curves: rolling mean over this many steps
STD_LABEL = "error bars: ±1 std over seeds"


def save(fig: Figure, path: Path) -> None:
    """``path`` (PNG, DPI) and the same figure as SVG beside it."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    fig.savefig(Path(path).with_suffix(".svg"), bbox_inches="tight")


def plot_heatmap(
    matrix: pd.DataFrame, title: str, path: Path, limits: tuple[float, float] | None = None, difference: bool = False
) -> None:
    """The X->Y matrix as an annotated heatmap: query language on y, corpus language on x. Colours span ``limits``
    (default: the matrix's own range); with ``difference``, a diverging map centred on 0 (a change, e.g. to
    zero-shot: blue better, red worse)."""
    n, values = len(matrix), matrix.to_numpy(dtype=float)
    decimals = 3 if n <= 8 else 2  # 11 languages leave no room for a third
    low, high = limits or (float(np.nanmin(values)), float(np.nanmax(values)))
    if difference:
        bound = max(abs(low), abs(high), 1e-9)
        norm, cmap, label = TwoSlopeNorm(0.0, -bound, bound), "RdBu", "difference in mAP"
    else:
        norm, cmap, label = None, "viridis", "mAP"
    fig = Figure(figsize=(2 + 0.6 * n, 1.5 + 0.6 * n))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=cmap, norm=norm, **({} if difference else {"vmin": low, "vmax": high}))
    for (row, col), value in np.ndenumerate(values):
        if not np.isnan(value):  # text that stays readable on the cell's colour
            shade = abs(value) / bound if difference else (value - low) / max(high - low, 1e-9)
            color = ("white" if shade > 0.6 else "black") if difference else ("white" if shade < 0.6 else "black")
            text = f"{value:+.{decimals}f}" if difference else f"{value:.{decimals}f}"
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n), matrix.columns)
    ax.set_yticks(range(n), matrix.index)
    ax.set(xlabel="corpus language", ylabel="query language", title=title)
    fig.colorbar(image, ax=ax, label=label)
    save(fig, path)


def plot_settings(summary: pd.DataFrame, title: str, path: Path) -> None:
    """One panel per metric (each on its own scale), bars for the mono, cross and multi means."""
    metrics = list(summary.columns)
    fig = Figure(figsize=(2.2 * len(metrics), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    colors = [f"C{i}" for i in range(len(summary.index))]
    for ax, metric in zip(axes, metrics, strict=True):
        values = summary[metric].to_numpy(dtype=float)
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), summary.index)
        finite = values[np.isfinite(values)]
        if len(finite):
            ax.set_ylim(max(0.0, finite.min() - 0.1), min(1.0, finite.max() + 0.05))
        ax.set_title(metric, fontsize=10)
    axes[0].set_ylabel("mean over language pairs")
    fig.suptitle(title)
    save(fig, path)


def plot_loss_curve(curve: pd.DataFrame, path: Path) -> None:
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
    save(fig, path)


def bars(ax, groups: list[str], series: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (label -> values, error bars)."""
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (label, (values, errors)) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(x + offset, values, width, yerr=errors, capsize=3 if errors is not None else 0, label=label)
    ax.set_xticks(x, groups)
    title = "arm" + (f"\n({STD_LABEL})" if any(errors is not None for _, errors in series.values()) else "")
    ax.legend(title=title, fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_map_bars(arms: pd.DataFrame, order: list[str], title: str, path: Path) -> None:
    """mAP per setting (groups) and arm (bars), error bars one std over seeds."""
    rows = arms[arms["metric"] == "map"]
    series = {}
    for arm in [arm for arm in order if arm in set(rows["arm"])]:
        by_setting = rows[rows["arm"] == arm].set_index("setting").reindex(SETTINGS)
        series[arm] = (by_setting["mean"].to_numpy(float), by_setting["std"].fillna(0.0).to_numpy(float))
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    bars(ax, SETTINGS, series)
    ax.set(ylabel="mAP (mean over seeds)", title=title)
    finite = np.concatenate([values[np.isfinite(values)] for values, _ in series.values()] or [np.zeros(0)])
    if len(finite):  # the differences between arms are a few points: start the axis near them, not at 0
        ax.set_ylim(max(0.0, finite.min() - 0.1), min(1.0, finite.max() + 0.05))
    save(fig, path)


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
    bars(ax, langs, series)
    ax.set(xlabel="query language", ylabel="rank distance (lower is better)", title=title)
    save(fig, path)


def plot_arm_losses(steps: pd.DataFrame, order: list[str], path: Path) -> None:
    """Per arm, the loss by step averaged over the arm's runs, as a rolling mean over SMOOTHING steps."""
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    for arm in [arm for arm in order if arm in set(steps["arm"])]:
        curve = steps[steps["arm"] == arm].groupby("step")["loss"].mean().sort_index()
        ax.plot(curve.index, curve.rolling(SMOOTHING, min_periods=1).mean(), label=arm)
    ax.set(xlabel="step", ylabel=f"loss (mean over seeds, rolling mean of {SMOOTHING})", title="training loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(title="arm", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, path)


def plot_dev_curves(dev_curve: pd.DataFrame, selected_step: object, path: Path) -> None:
    """Dev mAP by step, one line per setting (mean over dev datasets); the selected step marked."""
    maps = dev_curve[dev_curve["metric"] == "map"].groupby(["setting", "step"])["value"].mean()
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    for setting in [s for s in SETTINGS if s in maps.index.get_level_values("setting")]:
        curve = maps.loc[setting]
        ax.plot(curve.index, curve.to_numpy(), marker="o", label=setting)
    if not pd.isna(selected_step):
        ax.axvline(int(selected_step), color="grey", linestyle=":", label=f"model (step {int(selected_step)})")
    ax.set(xlabel="step", ylabel="dev mAP (mean over language pairs)", title="learning curves on the dev split")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, path)


def plot_arm_dev_curves(dev: pd.DataFrame, order: list[str], path: Path) -> None:
    """Per setting (one panel each) and arm, the dev mAP by step, averaged over the arm's runs and dev datasets."""
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, len(SETTINGS), sharex=True)
    for ax, setting in zip(axes, SETTINGS, strict=True):
        rows = dev[dev["setting"] == setting]
        for arm in [arm for arm in order if arm in set(rows["arm"])]:
            curve = rows[rows["arm"] == arm].groupby("step")["value"].mean().sort_index()
            ax.plot(curve.index, curve.to_numpy(), marker="o", markersize=3, label=arm)
        ax.set(xlabel="step", title=f"dev mAP, {setting}")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("dev mAP (mean over seeds)")
    axes[-1].legend(title="arm", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, path)


def plot_budgets(arms: pd.DataFrame, budgets: list[str], anchors: dict[str, dict], title: str, path: Path) -> None:
    """Per setting (one panel each), each arm's mAP at each budget (x: the studies, in order; a line per arm, error
    bars one std over seeds); ``anchors`` (name -> setting -> mAP, e.g. the paper's rows) as dotted lines.
    ``arms``: arm, budget, setting, mean, std."""
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, len(SETTINGS), sharex=True)
    for ax, setting in zip(axes, SETTINGS, strict=True):
        rows = arms[arms["setting"] == setting]
        groups = list(rows.groupby("arm", sort=False))
        for i, (arm, line) in enumerate(groups):
            line = line.set_index("budget").reindex(budgets)
            offset = (i - (len(groups) - 1) / 2) * 0.04  # side by side, so that equal means do not hide each other
            ax.errorbar(
                np.arange(len(budgets)) + offset,
                line["mean"],
                yerr=line["std"].fillna(0.0),
                marker="o",
                markersize=4,
                capsize=3,
                label=arm,
            )
        for i, (name, values) in enumerate(anchors.items()):
            ax.axhline(values[setting], color="grey", linestyle=[":", "--", "-."][i % 3], linewidth=1, label=name)
        ax.set_xticks(range(len(budgets)), budgets)
        ax.set_xlim(-0.3, len(budgets) - 0.7)
        ax.set(title=f"{title}, {setting}")
    axes[0].set_ylabel("mAP (mean over seeds)")
    axes[-1].legend(
        title=f"arm\n({STD_LABEL})", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0)
    )
    save(fig, path)
