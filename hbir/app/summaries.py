"""What the commands print when a run finishes: a few lines on training and on the evaluation, read from the rows
the run wrote."""

from __future__ import annotations

import pandas as pd

from hbir.core.config import Config
from hbir.core.names import SETTINGS
from hbir.store import runs
from hbir.store.query import read

ENDS = 10  # the loss at the start and the end: the mean of this many steps (one batch's loss is noisy)


def loss_line(curve: pd.DataFrame) -> str:
    """``loss 2.079 (mean of the first 10 steps) -> 0.201 (last 10)``."""
    ends = min(ENDS, max(1, len(curve) // 3))
    first, last = curve["loss"].head(ends).mean(), curve["loss"].tail(ends).mean()
    return f"loss {first:.3f} (mean of the first {ends} step{'s' * (ends > 1)}) -> {last:.3f} (last {ends})"


def batch_kinds(curve: pd.DataFrame) -> str:
    kinds = curve["batch_kind"].value_counts()
    return f"{kinds.get('mono', 0)} mono, {kinds.get('cross', 0)} cross batches"


def train_summary(config: Config, run_id: str, result) -> str:
    """A finished training run: batch kinds, loss at the start and the end, where the model is."""
    curve = runs.train_curve(config.db.path, run_id, config.db.lock_timeout_s)
    resumed = f", resumed after step {result.resumed_from}" if result.resumed_from else ""
    return (
        f"trained {result.steps} steps ({batch_kinds(curve)}) in {result.seconds:.0f} s{resumed}\n"
        f"{loss_line(curve)}\nmodel saved in {result.model_dir}\nrun {run_id} recorded in {config.db.path}"
    )


def eval_summary(config: Config, run_id: str, rows: dict[str, pd.DataFrame]) -> str:
    """The setting summaries (mean over language pairs) and language bias of an eval run, a few lines."""
    metrics, bias = rows["metrics"], rows["language_bias"]
    lines = []
    for dataset, group in metrics.groupby("dataset", sort=False):
        summary = group.pivot_table(index="setting", columns="metric", values="value", aggfunc="mean")
        pairs = group[group["metric"] == "map"]["setting"].value_counts()
        lines.append(f"{dataset} (" + ", ".join(f"{pairs.get(s, 0)} {s}" for s in SETTINGS) + "):")
        lines.append(summary.reindex(list(SETTINGS)).round(3).to_string())
        of_dataset = bias[bias["dataset"] == dataset]
        if len(of_dataset):
            lines.append(
                f"language bias (multi): rank distance {of_dataset['rank_distance'].mean():.1f}, first hit in the "
                f"query's language {of_dataset['same_lang_first_rate'].mean():.1%} (means over query languages)"
            )
    report = rows["artifacts"].query("kind == 'report'")["path"]
    lines.append(f"report: {report.iloc[0] if len(report) else '-'}\nrun {run_id} recorded in {config.db.path}")
    return "\n".join(lines)


def run_summary_text(config: Config, run_id: str) -> str:
    """What a finished train-eval run did, read back from the results database: training, then evaluation."""
    db, timeout = config.db.path, config.db.lock_timeout_s
    rows = {
        table: read(db, f"SELECT * FROM {table} WHERE run_id = ?", [run_id], timeout)
        for table in ("metrics", "language_bias", "artifacts")
    }
    curve = runs.train_curve(db, run_id, timeout)
    lines = [f"trained {len(curve)} steps ({batch_kinds(curve)}), {loss_line(curve)}"] if len(curve) else []
    return "\n".join([*lines, eval_summary(config, run_id, rows)])
