"""``hbir report --study``: a study's rows read from the results database into ``StudyData``, from which
``tasks/report/study.py`` writes the results document."""

from __future__ import annotations

import pandas as pd

from hbir.store.query import read
from tasks.comparison import Comparison
from tasks.report.study_data import LAST_STEPS, StudyData, run_table


def load_study(db: str, comparison: Comparison, study_id: str, lock_timeout_s: float = 60.0) -> StudyData:
    """The rows of the compared runs that the document needs, read-only from ``db``."""
    ids = comparison.runs["run_id"].tolist()
    arms = comparison.runs[["run_id", "arm"]]

    def read_rows(sql: str, *params) -> pd.DataFrame:
        return read(db, sql, [ids, *params], lock_timeout_s)

    runs = read_rows(
        "SELECT run_id, config, device, git_revision, started_at, finished_at, world_size, micro_batch_size, "
        "merge_weight "
        "FROM runs WHERE run_id IN ?"
    )
    losses = read_rows(
        "SELECT run_id, avg(loss) AS final_loss FROM (SELECT run_id, loss, row_number() OVER "
        "(PARTITION BY run_id ORDER BY step DESC) AS n FROM train_steps WHERE run_id IN ?) "
        "WHERE n <= ? GROUP BY run_id",
        LAST_STEPS,
    )
    metrics = read_rows(
        "SELECT run_id, dataset, setting, query_lang, corpus_lang, value FROM metrics "
        "WHERE run_id IN ? AND metric = 'map'"
    )
    versions = read_rows("SELECT run_id, dataset, lang, n_queries FROM dataset_versions WHERE run_id IN ?")
    steps = read_rows("SELECT run_id, step, loss FROM train_steps WHERE run_id IN ? ORDER BY run_id, step")
    dev = read_rows(
        "SELECT run_id, step, dataset, setting, value FROM dev_metrics WHERE run_id IN ? AND metric = 'map' "
        "ORDER BY run_id, step"
    )
    return StudyData(
        study_id,
        db,
        comparison,
        run_table(comparison.runs, runs, losses),
        metrics.merge(arms),
        versions,
        steps.merge(arms),
        dev.merge(arms),
    )
