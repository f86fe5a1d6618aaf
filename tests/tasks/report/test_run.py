"""The run report: markdown numbers against pandas computed here, valid PNGs, hashes, safe names, missing data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from hbir.core.names import METRICS
from tasks.report import run as run_report
from tasks.report.markdown import ReportFile
from tasks.report.run import write_report

LANGS = ["ar", "de", "en"]
RUN = {"run_id": "r1", "kind": "eval", "model_source": "random:tiny", "strategy": "hybrid", "alpha": 0.5, "seed": 0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(dataset: str, langs: list[str], seed: int = 0) -> pd.DataFrame:
    """All six metrics for every mono (X->X), cross (X->Y, X != Y) and multi (X->all) pair, random values."""
    rng = np.random.default_rng(seed)
    pairs = [(q, c, "mono" if q == c else "cross") for q in langs for c in langs]
    pairs += [(q, "all", "multi") for q in langs]
    rows = [
        {"dataset": dataset, "setting": setting, "query_lang": q, "corpus_lang": c, "metric": metric}
        for q, c, setting in pairs
        for metric in METRICS
    ]
    return pd.DataFrame(rows).assign(value=rng.uniform(0, 1, len(rows)), n_queries=50)


def _language_bias(dataset: str, langs: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "dataset": dataset,
            "query_lang": langs,
            "rank_distance": rng.uniform(0, 5, len(langs)),
            "same_lang_first_rate": rng.uniform(0, 1, len(langs)),
            "n_queries": [40, 50, 60][: len(langs)],
        }
    )


def _train_curve() -> pd.DataFrame:
    # loss = 2.0 - 0.05 * (step - 1): first 10 steps mean 2.0 - 0.05 * 4.5 = 1.775, last 10 2.0 - 0.05 * 14.5 = 1.275
    steps = np.arange(1, 21)
    return pd.DataFrame(
        {
            "step": steps,
            "loss": 2.0 - 0.05 * (steps - 1),
            "lr": np.linspace(1e-5, 2e-5, 20),
            "batch_kind": ["mono" if step % 4 == 0 else "cross" for step in steps],  # 5 mono, 15 cross
        }
    )


def _table(markdown: str, heading: str) -> pd.DataFrame:
    """The first markdown table after the line ``heading``, as strings, indexed by its first column."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    header, body = rows[0], rows[2:]  # rows[1] is the |---| line
    return pd.DataFrame(body, columns=header).set_index(header[0])


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[ReportFile], pd.DataFrame]:
    out_dir = tmp_path_factory.mktemp("report") / "r1"
    metrics = pd.concat([_metrics("xquad-r", LANGS), _metrics("mlqa-r", LANGS, seed=2)], ignore_index=True)
    bias = pd.concat([_language_bias("xquad-r", LANGS), _language_bias("mlqa-r", LANGS)], ignore_index=True)
    files = write_report(out_dir, RUN, metrics, bias, _train_curve())
    return out_dir, files, metrics


def test_writes_the_markdown_first_then_valid_pngs(written):
    out_dir, files, _ = written
    assert [(f.kind, f.path.name) for f in files] == [
        ("report", "report.md"),
        ("plot", "settings_xquad-r.png"),
        ("plot", "map_heatmap_xquad-r.png"),
        ("plot", "settings_mlqa-r.png"),
        ("plot", "map_heatmap_mlqa-r.png"),
        ("plot", "loss.png"),
    ]
    from PIL import Image

    for plot in files[1:]:
        assert plot.path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, channels = matplotlib.image.imread(plot.path).shape
        assert height > 600 and width > 600 and channels in (3, 4)
        assert Image.open(plot.path).info["dpi"] == pytest.approx((300, 300), abs=0.5)  # print resolution
        assert plot.path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")  # and a vector copy
    svgs = [f.path.with_suffix(".svg").name for f in files[1:]]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([f.path.name for f in files] + svgs)  # no temp file


def test_sha256_is_of_the_file_bytes(written):
    _, files, _ = written
    for file in files:
        assert file.sha256 == hashlib.sha256(file.path.read_bytes()).hexdigest()


def test_markdown_links_every_plot_by_relative_path(written):
    out_dir, files, _ = written
    markdown = (out_dir / "report.md").read_text()
    assert markdown.startswith("# Run r1\n")
    assert "- model source: random:tiny" in markdown and "- alpha: 0.500" in markdown
    for plot in files[1:]:
        assert f"]({plot.path.name})" in markdown


def test_setting_summary_is_the_mean_over_language_pairs(written):
    out_dir, _, metrics = written
    table = _table((out_dir / "report.md").read_text(), "## mlqa-r")
    # computed independently: the run_summary view's avg(value) GROUP BY dataset, setting, metric
    expected = metrics[metrics["dataset"] == "mlqa-r"].groupby(["setting", "metric"])["value"].mean()
    assert list(table.columns) == list(METRICS) and list(table.index) == ["mono", "cross", "multi"]
    for (setting, metric), value in expected.items():
        assert table.loc[setting, metric] == f"{value:.3f}"
    mono_map = metrics.query("dataset == 'mlqa-r' and setting == 'mono' and metric == 'map'")["value"]
    assert len(mono_map) == 3 and float(table.loc["mono", "map"]) == pytest.approx(mono_map.mean(), abs=5e-4)


def test_map_matrix_diagonal_is_mono_off_diagonal_cross_pool_multi(written):
    out_dir, _, metrics = written
    matrix = _table((out_dir / "report.md").read_text().split("## mlqa-r")[0], "### mAP")
    assert list(matrix.index) == LANGS and list(matrix.columns) == [*LANGS, "pool"]
    map_rows = metrics.query("dataset == 'xquad-r' and metric == 'map'")
    for row in map_rows.itertuples():
        column = "pool" if row.setting == "multi" else row.corpus_lang
        assert (row.setting == "mono") == (row.query_lang == column)
        assert matrix.loc[row.query_lang, column] == f"{row.value:.3f}"


def test_language_bias_has_a_macro_average_row(written):
    out_dir, _, _ = written
    table = _table((out_dir / "report.md").read_text(), "### Language bias")
    bias = _language_bias("xquad-r", LANGS)
    assert list(table.index) == [*LANGS, "mean"]
    assert table.loc["mean", "rank_distance"] == f"{bias['rank_distance'].mean():.3f}"
    assert table.loc["mean", "same_lang_first_rate"] == f"{bias['same_lang_first_rate'].mean():.3f}"
    assert table.loc["mean", "n_queries"] == "150"  # 40 + 50 + 60


def test_training_summary(written):
    out_dir, _, _ = written
    markdown = (out_dir / "report.md").read_text()
    assert "- steps: 20 (mono batches: 5, cross batches: 15)" in markdown
    assert "- mean loss, first 10 steps: 1.775" in markdown and "- mean loss, last 10 steps: 1.275" in markdown


def test_no_train_curve_no_loss_plot(tmp_path):
    for curve in [None, _train_curve().iloc[:0]]:
        files = write_report(tmp_path, RUN, _metrics("d", ["en"]), _language_bias("d", ["en"]), curve)
        assert "loss.png" not in {f.path.name for f in files} and not (tmp_path / "loss.png").exists()
        assert "## Training" not in (tmp_path / "report.md").read_text()


def test_dataset_names_become_safe_file_names(tmp_path):
    files = write_report(tmp_path, RUN, _metrics("mldr:test/v1 x", ["en"]), _language_bias("mldr:test/v1 x", ["en"]))
    assert {f.path.name for f in files[1:]} == {"settings_mldr_test_v1_x.png", "map_heatmap_mldr_test_v1_x.png"}
    assert "](map_heatmap_mldr_test_v1_x.png)" in (tmp_path / "report.md").read_text()


def test_one_language_mono_only_with_a_missing_metric(tmp_path):
    metrics = _metrics("d", ["en"]).query("setting == 'mono' and metric != 'recall@100'")
    files = write_report(tmp_path / "new" / "dir", {"run_id": "r2"}, metrics, _language_bias("d", ["en"]).iloc[:0])
    markdown = files[0].path.read_text()
    summary = _table(markdown, "## d")
    assert summary.loc["mono", "recall@100"] == "–" and (summary.loc[["cross", "multi"]] == "–").all().all()
    mono_map = metrics.loc[metrics["metric"] == "map", "value"].item()
    assert summary.loc["mono", "map"] == f"{mono_map:.3f}"
    assert _table(markdown, "### mAP").loc["en"].tolist() == [summary.loc["mono", "map"], "–"]  # en->en, pool
    assert "- alpha: –" in markdown and "No language-bias rows." in markdown


def test_a_failing_plot_leaves_no_report(tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(run_report, "plot_loss_curve", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(tmp_path, RUN, _metrics("d", ["en"]), _language_bias("d", ["en"]), _train_curve())
    assert not (tmp_path / "report.md").exists()


def test_a_run_with_a_dev_split_shows_its_learning_curves(tmp_path):
    dev = pd.DataFrame(
        [
            {"step": step, "dataset": "mlqa-r", "setting": setting, "metric": "map", "value": value}
            for step, values in [(50, (0.70, 0.50, 0.40)), (100, (0.72, 0.55, 0.46))]
            for setting, value in zip(("mono", "cross", "multi"), values, strict=True)
        ]
    )
    run = {**RUN, "selected_step": 100}
    files = write_report(tmp_path, run, _metrics("d", ["en"]), _language_bias("d", ["en"]), dev_curve=dev)
    text = (tmp_path / "report.md").read_text()
    assert "## Learning curves (dev split)" in text and "the weights of step 100" in text
    assert "| 100 | 0.720 | 0.550 | 0.460 |" in text and "| 50 | 0.700 | 0.500 | 0.400 |" in text
    assert (tmp_path / "dev_map.png") in [f.path for f in files]
    assert matplotlib.image.imread(tmp_path / "dev_map.png").ndim == 3
