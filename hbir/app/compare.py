"""``hbir compare``: the runs of a study (or a list of runs) read from the results database and compared with
``tasks/comparison.py`` (means and stds over seeds, paired randomisation tests, language bias)."""

from __future__ import annotations

import pandas as pd

from hbir.core.errors import HbirError
from hbir.store.query import read
from tasks.comparison import Comparison, compare, with_arms


def compare_runs(
    db: str,
    study_id: str | None = None,
    run_ids: list[str] | None = None,
    metrics: tuple[str, ...] = ("map",),
    permutations: int = 10_000,
    seed: int = 0,
    lock_timeout_s: float = 60.0,
    bootstrap: int = 1000,
) -> Comparison:
    """Compare the completed runs of a study, or the given runs."""
    runs = select_runs(db, study_id, run_ids, lock_timeout_s)
    ids = runs["run_id"].tolist()

    def rows(sql: str, *params) -> pd.DataFrame:
        return read(db, sql, [ids, *params], lock_timeout_s)

    return compare(
        runs,
        rows("SELECT * FROM run_summary WHERE run_id IN ?"),
        rows(
            "SELECT run_id, dataset, setting, query_lang, corpus_lang, qid, metric, value FROM per_query "
            "WHERE run_id IN ? AND metric IN ?",
            list(metrics),
        ),
        rows("SELECT * FROM language_bias WHERE run_id IN ?"),
        permutations,
        seed,
        bootstrap,
    )


def select_runs(db: str, study_id: str | None, run_ids: list[str] | None, lock_timeout_s: float = 60.0) -> pd.DataFrame:
    """The completed runs to compare, with their arm; HbirError naming what is missing."""
    if (study_id is None) == (run_ids is None):
        raise HbirError("compare a study (--study ID) or a list of runs (--runs A,B,...), one of the two")
    if study_id is not None:
        runs = read(db, "SELECT * FROM runs WHERE study_id = ? AND status = 'completed'", [study_id], lock_timeout_s)
        if runs.empty:
            raise HbirError(f"study {study_id!r} has no completed run in {db}: `hbir study` runs it")
    else:
        runs = read(db, "SELECT * FROM runs WHERE run_id IN ?", [list(run_ids)], lock_timeout_s)
        missing = sorted(set(run_ids) - set(runs["run_id"]))
        unfinished = runs.loc[runs["status"] != "completed", "run_id"].tolist()
        if missing or unfinished:
            raise HbirError(
                f"cannot compare: no such run {missing}" if missing else f"runs not completed: {unfinished}"
            )
    return with_arms(runs)
