"""`hbir report`: a study's results document from a real results database (a tiny smoke study run through the CLI,
with real data where MLQA-R lacks Chinese, so zh is unseen in training): links that resolve to PNGs, numbers equal to
SQL on the same rows, one verdict per claim, missing arms named, unknown studies refused with nothing written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from hbir.app.compare import compare_runs as compare
from hbir.app.study_report import load_study
from tasks.report import study as study_report
from tasks.report.markdown import fmt_p
from tasks.report.study import write_study_report
from tests.helpers import db_rows, run_study

STUDY = """
study_id: report-study
profile: smoke
settings:
  data.languages: [de, en, zh]
  data.train: [mlqa-r]
  data.eval: [xquad-r]
  eval.save_indexes: false
  train.eval_every: 2                 # learning curves on the dev split
zero_shot: true
grids:
  - train.strategy: [hybrid]
    train.seed: [0, 1]
  - train.strategy: [mono, cross]
    train.seed: [0]
  - train.strategy: [hybrid]          # the reverse direction: only hybrid, so mono and cross are missing there
    data.train: [[xquad-r]]
    data.eval: [[mlqa-r]]
"""
LONGER_STUDY = """
study_id: report-study-longer
profile: smoke
settings:
  data.languages: [de, en, zh]
  data.train: [mlqa-r]
  data.eval: [xquad-r]
  eval.save_indexes: false
  train.steps: 6                      # the same question at another budget
grids:
  - train.strategy: [hybrid]
    train.seed: [0, 1]
  - train.strategy: [mono]
    train.seed: [0]
"""
MAP_HEADING = "### mAP by setting and arm (mean ± std over seeds)"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VERDICT = re.compile(r"^\*\*(C\d) — .+: (holds|does not hold|cannot be checked)\.\*\* (.*)$")
# the arm `compare` names each run (several training sets in the study: "<arm> on <train>"), in SQL
ARM_SQL = (
    "CASE WHEN strategy = 'zero-shot' THEN 'zero-shot' ELSE (CASE WHEN strategy = 'hybrid' "
    "THEN 'hybrid a=' || CAST(alpha AS VARCHAR) ELSE strategy END) || ' on ' || "
    "json_extract_string(config, '$.data.train[0]') END"
)


@pytest.fixture(scope="module")
def no_chinese_training_data(three_language_data, tmp_path_factory) -> Path:
    """XQuAD-R in de, en, zh and MLQA-R in de, en only: a model trained on MLQA-R has never seen zh."""
    root = tmp_path_factory.mktemp("lareqa-no-zh")
    shutil.copytree(three_language_data, root, dirs_exist_ok=True)
    (root / "mlqa-r" / "zh.json").unlink()
    return root


@pytest.fixture(scope="module")
def reported(no_chinese_training_data, tmp_path_factory):
    """The study run once through the CLI, then `hbir report` on it: (hbir, db, markdown path, markdown text)."""
    root = tmp_path_factory.mktemp("study-report")
    hbir = run_study(root, STUDY, no_chinese_training_data, root / "runs")
    out = root / "docs" / "results.md"
    result = hbir("report", "--study", "report-study", "--out", str(out), "--permutations", "200")
    assert result.exit_code == 0, result.output[-3000:]
    assert f"report {out}" in result.output and "plot   " in result.output
    return hbir, root / "results.duckdb", out, out.read_text(encoding="utf-8")


def _section(markdown: str, heading: str) -> str:
    """The text under ``heading`` (a whole line), up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    lines = markdown.splitlines()
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"^#{{1,{len(level)}}} ", lines[i])),
        len(lines),
    )
    return "\n".join(lines[start:end])


def _table(text: str) -> dict[str, dict[str, str]]:
    """The first markdown table of ``text``: {first cell: {column: cell}} (later rows of a repeated key win)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    table = {}
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(header, cells, strict=True))
    return table


def _verdicts(text: str) -> list[tuple[str, str, str]]:
    return [match.groups() for line in text.splitlines() if (match := VERDICT.match(line))]


def test_every_linked_plot_exists_and_is_a_png(reported):
    _, db, out, markdown = reported
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    # xquad-r and mlqa-r: a bar chart, a bias chart, a heatmap per arm evaluated on it and one of each trained arm's
    # change to zero-shot; one loss chart, one of the dev learning curves
    assert len(links) == (2 + 4 + 3) + (2 + 2 + 1) + 1 + 1
    assert sum("/change_" in link for link in links) == 3 + 1
    for link in links:
        assert link.startswith("results/"), link  # relative, into the folder next to the markdown
        path = out.parent / link
        assert path.read_bytes()[:8] == PNG_SIGNATURE, link
        assert path.with_suffix(".svg").is_file(), link
    assert not list(out.parent.glob("*.partial"))
    assert markdown.startswith("# Results of study report-study\n")
    assert f"Generated by `hbir report --study report-study` from `{db.name}` on " in markdown
    assert "Do not edit by hand" in markdown


def test_the_map_table_equals_sql_on_run_summary(reported):
    _, db, _, markdown = reported
    expected = db_rows(
        db,
        f"SELECT dataset, setting, {ARM_SQL} AS arm, avg(value), stddev_samp(value), count(*) FROM run_summary "
        "JOIN runs USING (run_id) WHERE study_id = 'report-study' AND metric = 'map' GROUP BY ALL",
    )
    trained_on_mlqa = {"mono on mlqa-r", "cross on mlqa-r", "hybrid a=0.5 on mlqa-r"}
    assert {row[2] for row in expected} == {"zero-shot", "hybrid a=0.5 on xquad-r", *trained_on_mlqa}
    assert len(expected) == 3 * 4 + 3 * 2  # xquad-r: 3 settings x 4 arms; mlqa-r: zero-shot and hybrid
    for dataset, setting, arm, mean, std, n in expected:
        table = _table(_section(_section(markdown, f"## Results on {dataset}"), MAP_HEADING))
        cell = table[arm][setting]
        # 2 seeds for hybrid on MLQA-R: mean ± std; one run for the other arms: the mean alone
        assert cell == (f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"), (dataset, setting, arm)
        assert table[arm]["runs"] == str(n)


def test_setup_lists_the_runs_and_the_languages_unseen_in_training(reported):
    _, db, _, markdown = reported
    setup = _section(markdown, "## Setup")
    assert "- model.source: random:tiny" in setup and "- train.steps: 4" in setup
    assert "- data.train: mlqa-r (4 runs), xquad-r (1 run)" in setup  # zero-shot runs train on nothing
    runs = _table(_section(setup, "### Runs"))
    assert set(runs) == {row[0] for row in db_rows(db, "SELECT run_id FROM runs WHERE study_id = 'report-study'")}
    # smoke trains 4 steps, so the loss of the last 10 steps is the mean of all 4
    (loss,) = db_rows(db, "SELECT avg(loss) FROM train_steps WHERE run_id = 'report-study-hybrid-s1'")[0]
    assert runs["report-study-hybrid-s1"]["loss"] == f"{loss:.3f}"
    assert runs["report-study-hybrid-s1"]["arm"] == "hybrid a=0.5 on mlqa-r"
    zero_shot = runs["report-study-zero-shot-train-mlqa-r-eval-xquad-r"]
    assert (zero_shot["arm"], zero_shot["train"], zero_shot["loss"]) == ("zero-shot", "–", "–")
    assert (zero_shot["ranks"], runs["report-study-hybrid-s1"]["ranks"]) == ("–", "1")  # trained on one process
    assert runs["report-study-hybrid-s1"]["micro-batch"] == "–"
    languages = _section(setup, "### Languages")
    assert "- xquad-r, trained on mlqa-r: evaluation languages absent from training: zh" in languages
    assert "- mlqa-r, trained on xquad-r: evaluation languages absent from training: none" in languages


def test_each_claim_gets_one_verdict_computed_from_the_numbers(reported):
    _, db, _, markdown = reported
    xquad = _verdicts(_section(markdown, "### xquad-r (trained on mlqa-r)"))
    assert [key for key, _, _ in xquad] == ["C1", "C2", "C3", "C4"]
    assert all(verdict != "cannot be checked" for _, verdict, _ in xquad)  # every arm is there
    multi = dict(
        db_rows(
            db,
            f"SELECT {ARM_SQL}, avg(value) FROM run_summary JOIN runs USING (run_id) WHERE study_id = 'report-study' "
            "AND dataset = 'xquad-r' AND setting = 'multi' AND metric = 'map' GROUP BY ALL",
        )
    )
    hybrid_best = multi["hybrid a=0.5 on mlqa-r"] > max(multi["mono on mlqa-r"], multi["cross on mlqa-r"])
    assert xquad[0][1] == ("holds" if hybrid_best else "does not hold")
    assert "significant at 0.05" in xquad[0][2] and "Threshold: hybrid within 0.01 mAP" in xquad[1][2]

    # C4: mean over the pairs with zh on either side (zh -> all counts by its query language) of the runs' mean
    ((unseen,),) = db_rows(
        db,
        "SELECT avg(value) FROM (SELECT setting, query_lang, corpus_lang, avg(value) AS value FROM metrics "
        "WHERE run_id IN ('report-study-hybrid-s0', 'report-study-hybrid-s1') AND dataset = 'xquad-r' "
        "AND metric = 'map' AND (query_lang = 'zh' OR corpus_lang = 'zh') GROUP BY ALL)",
    )
    assert "Unseen in training: zh" in xquad[3][2] and f"hybrid (a=0.5) {unseen:.3f}" in xquad[3][2]
    assert "the 6 language pairs" in xquad[3][2]  # zh->zh; zh->de, zh->en, de->zh, en->zh; zh->all


def test_claims_that_need_a_missing_arm_say_so(reported):
    _, _, _, markdown = reported
    mlqa = _verdicts(_section(markdown, "### mlqa-r (trained on xquad-r)"))
    assert [(key, verdict) for key, verdict, _ in mlqa] == [(f"C{i}", "cannot be checked") for i in range(1, 5)]
    assert "no 'mono', 'cross' arm" in mlqa[0][2]
    assert "no language is unseen" in mlqa[3][2]


def test_a_study_without_a_cross_arm_is_reported_without_failing(reported, tmp_path):
    _, db, _, _ = reported
    run_ids = [row[0] for row in db_rows(db, "SELECT run_id FROM runs WHERE study_id = 'report-study'")]
    comparison = compare(str(db), run_ids=[r for r in run_ids if "cross" not in r], permutations=50)
    files = write_study_report(tmp_path / "r.md", load_study(str(db), comparison, "report-study"))
    xquad = _verdicts(_section(files[0].path.read_text(encoding="utf-8"), "### xquad-r (trained on mlqa-r)"))
    assert [verdict for _, verdict, _ in xquad] == ["cannot be checked"] * 4
    assert all("no 'cross' arm" in text for _, _, text in xquad)
    assert all(path.exists() for path in (f.path for f in files))


def test_a_crash_while_plotting_leaves_no_document(reported, tmp_path, monkeypatch):
    _, db, _, _ = reported
    data = load_study(str(db), compare(str(db), study_id="report-study", permutations=50), "report-study")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(study_report, "plot_arm_losses", broken)
    with pytest.raises(RuntimeError):
        write_study_report(tmp_path / "results.md", data)
    assert not (tmp_path / "results.md").exists() and not (tmp_path / "results.md.partial").exists()


def test_an_unknown_study_is_refused_and_nothing_is_written(reported, tmp_path):
    hbir, _, _, _ = reported
    out = tmp_path / "docs" / "results.md"
    result = hbir("report", "--study", "no-such-study", "--out", str(out))
    assert result.exit_code != 0
    assert "study 'no-such-study' has no completed run" in result.output
    assert not out.exists() and not (tmp_path / "docs").exists()


def test_p_values_keep_4_significant_digits_and_floor_at_one_over_1_plus_permutations():
    assert fmt_p(1 / 10_001, 10_000) == "< 0.0001"  # no flip as extreme: (1 + 0) / (1 + 10 000)
    assert fmt_p(1 / 201, 200) == "< 0.005"  # 1 / 201 = 0.004975, rounded up to one digit
    assert fmt_p(2 / 201, 200) == "0.00995"  # one flip as extreme: 2 / 201 = 0.0099502...
    assert fmt_p(0.123456, 10_000) == "0.1235" and fmt_p(1.0, 10_000) == "1"
    assert fmt_p(None, 10_000) == "–"


def test_the_learning_curves_are_those_of_the_dev_metrics(reported):
    _, db, out, markdown = reported
    section = _section(markdown, "## Learning curves (dev split)")
    assert "![dev mAP by step per arm](results/dev_curves.png)" in section
    # every trained run measured its dev split after steps 2 and 4 (eval_every 2 of the smoke profile's 4 steps)
    steps = db_rows(
        db,
        "SELECT run_id, list(DISTINCT step ORDER BY step) FROM dev_metrics JOIN runs USING (run_id) "
        "WHERE study_id = 'report-study' GROUP BY run_id",
    )
    assert len(steps) == 5 and all(measured == [2, 4] for _, measured in steps)


def test_latex_tables_hold_the_markdown_numbers(reported, tmp_path):
    hbir, _, _, markdown = reported
    out = tmp_path / "paper.md"
    result = hbir("report", "--study", "report-study", "--out", str(out), "--permutations", "200", "--latex")
    assert result.exit_code == 0 and f"latex  {tmp_path / 'paper.tex'}" in result.output, result.output
    tex = (tmp_path / "paper.tex").read_text(encoding="utf-8")
    assert tex.count("\\begin{table}") == tex.count("\\end{table}") >= 5 and "\\toprule" in tex
    assert "\\label{tab:report-study-xquad-r-map}" in tex and "hybrid a=0.5 on mlqa-r" in tex
    hybrid = _table(_section(_section(markdown, "## Results on xquad-r"), MAP_HEADING))["hybrid a=0.5 on mlqa-r"]
    assert hybrid["mono"].replace("±", "$\\pm$") in tex.replace("±", "$\\pm$")


@pytest.fixture(scope="module")
def side_by_side(reported, no_chinese_training_data):
    """A second study at another budget in the same database, and `hbir report` of both: (db, path, markdown)."""
    _, db, _, _ = reported
    hbir = run_study(db.parent, LONGER_STUDY, no_chinese_training_data, db.parent / "runs")
    out = db.parent / "both" / "results.md"
    args = ["report", "--study", "report-study", "--study", "report-study-longer", "--permutations", "200"]
    result = hbir(*args, "--out", str(out))
    assert result.exit_code == 0, result.output[-3000:]
    return db, out, out.read_text(encoding="utf-8")


def test_two_studies_side_by_side_show_each_studys_own_numbers(reported, side_by_side):
    _, _, _, alone = reported
    db, out, markdown = side_by_side
    assert markdown.startswith("# Results of studies report-study and report-study-longer\n")
    assert "`hbir report --study report-study --study report-study-longer`" in markdown
    table = _table(_section(markdown, "### mAP on xquad-r, trained on mlqa-r (mean ± std over seeds)"))
    assert list(table) == ["zero-shot", "mono", "cross", "hybrid a=0.5"]  # the first study's order
    own = _table(_section(_section(alone, "## Results on xquad-r"), MAP_HEADING))
    longer = dict(
        db_rows(
            db,
            "SELECT strategy || '/' || setting, CASE WHEN count(*) > 1 THEN printf('%.3f ± %.3f', avg(value), "
            "stddev_samp(value)) ELSE printf('%.3f', avg(value)) END FROM run_summary JOIN runs USING (run_id) "
            "WHERE study_id = 'report-study-longer' AND metric = 'map' AND dataset = 'xquad-r' GROUP BY ALL",
        )
    )
    for setting in ("mono", "cross", "multi"):
        assert table["hybrid a=0.5"][f"4 steps: {setting}"] == own["hybrid a=0.5 on mlqa-r"][setting]
        assert table["zero-shot"][f"4 steps: {setting}"] == own["zero-shot"][setting]
        assert table["hybrid a=0.5"][f"6 steps: {setting}"] == longer[f"hybrid/{setting}"]
        assert table["mono"][f"6 steps: {setting}"] == longer[f"mono/{setting}"]
        assert table["zero-shot"][f"6 steps: {setting}"] == longer[f"zero-shot/{setting}"]
        assert table["cross"][f"6 steps: {setting}"] == "–"  # the longer study has no cross arm
    budgets = _table(_section(markdown, "## The studies side by side").split("\n### ")[0])
    assert budgets["4 steps"]["train.steps"] == "4" and budgets["6 steps"]["train.steps"] == "6"
    assert budgets["6 steps"]["runs"] == "4"  # and its zero-shot run


def test_two_studies_side_by_side_keep_each_studys_sections_verdicts_and_plots(side_by_side):
    _, out, markdown = side_by_side
    verdicts = _table(_section(markdown, "### The paper's claims, per study"))
    assert len(verdicts) == 4
    columns = set(next(iter(verdicts.values()))) - {"claim"}
    assert columns == {
        "4 steps: mlqa-r (trained on xquad-r)",
        "4 steps: xquad-r (trained on mlqa-r)",
        "6 steps: xquad-r (trained on mlqa-r)",
    }
    longer = _section(markdown, "## Study report-study-longer")
    assert "### Setup" in longer and "### Results on xquad-r" in longer and "#### Runs" in longer
    assert "(6 steps: xquad-r (trained on mlqa-r))" not in longer  # its own claims, in its own words
    assert _verdicts(_section(longer, "### The claims"))  # one verdict line per claim, as for one study
    for study in ("report-study", "report-study-longer"):
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", _section(markdown, f"## Study {study}"))
        assert links and all(link.startswith(f"results/{study}/") for link in links)
        assert all((out.parent / link).read_bytes()[:8] == PNG_SIGNATURE for link in links)
    budgets = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", _section(markdown, "## The studies side by side"))
    assert budgets == ["results/budgets_mlqa-r_xquad-r.png", "results/budgets_xquad-r_mlqa-r.png"]
    assert all((out.parent / link).read_bytes()[:8] == PNG_SIGNATURE for link in budgets)
    anchors = _table(_section(markdown, "### Against the paper's rows (xquad-r, trained on mlqa-r)"))
    assert anchors["XLM-R hybrid (paper)"]["mono"] == "0.798"
    assert {"4 steps: hybrid a=0.5", "6 steps: hybrid a=0.5", "4 steps: zero-shot"} <= set(anchors)
