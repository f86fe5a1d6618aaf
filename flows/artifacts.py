"""What a run shows in Prefect's UI: its setting summaries as a table artifact, and its report with the plots
inlined (the UI cannot read files on the worker's disk)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from hbir.core.config import Config
from hbir.store.query import read
from tasks.report.run import setting_summary


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-") or "run"


def summary_rows(config: Config, run_id: str) -> list[dict]:
    """The run's ``run_summary`` (mean over language pairs): one row per dataset and setting, a column per metric."""
    summary = read(
        config.db.path,
        "SELECT dataset, setting, metric, value FROM run_summary WHERE run_id = ?",
        [run_id],
        config.db.lock_timeout_s,
    )
    rows = []
    for dataset, of_dataset in summary.groupby("dataset"):
        table = setting_summary(of_dataset).round(4).reset_index()
        rows += [{"dataset": dataset, **row} for row in table.to_dict(orient="records")]
    return rows


def report_markdown(report: Path) -> str:
    """The report's markdown with each linked PNG replaced by a data URI."""

    def inline(match: re.Match) -> str:
        path = report.parent / match.group(2)
        if not path.exists():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, report.read_text(encoding="utf-8"))
