"""Markdown for the reports: tables, numbers and p-values as text, safe file names, and the files a report wrote."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hbir.core.files import file_sha256

MISSING = "–"


@dataclass(frozen=True)
class ReportFile:
    """One file of a report: ``kind`` is "report" for the markdown, "plot" for a PNG; ``sha256`` of its bytes."""

    kind: str
    path: Path
    sha256: str


def report_file(kind: str, path: Path) -> ReportFile:
    return ReportFile(kind, path, file_sha256(path))


def safe_name(name: str) -> str:
    """``name`` with every character outside [A-Za-z0-9._-] replaced by '_', for use in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def cell(value: object) -> str:
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
        lines.append("| " + " | ".join([str(label), *map(cell, row)]) + " |")
    return lines


def fmt(value: float | None) -> str:
    """A number with 3 decimals; "–" when there is none."""
    return MISSING if value is None or pd.isna(value) else f"{value:.3f}"


def mean_std(mean: float, std: float, n_runs: int) -> str:
    """ "0.785 ± 0.008" over several runs, the mean alone for one."""
    return fmt(mean) + (f" ± {fmt(std)}" if n_runs > 1 else "")


def fmt_signed(value: float) -> str:
    return f"{value:+.3f}"


def p_relation(p_text: str) -> str:
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
