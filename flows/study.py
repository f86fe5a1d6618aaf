"""The ``study`` flow: every run of a study (``hbir/app/study.py``) as a ``train-eval`` subflow, tied by its study id.

    hbir study                                   # the built-in study, here (Prefect's ephemeral mode)
    prefect deployment run 'study/study' --watch # on the work pool (prefect.yaml)

A merged arm (``train.merge``) whose other settings are another run's merges that run's model, when it is there,
instead of training the same model again (the plan puts it right after that run);
runs that completed before with the same settings are skipped; a failed run does not stop the others, and the
study fails at the end naming the runs that failed (start it again to continue them).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import steps
from flows.merge_eval import merge_eval
from flows.train_eval import train_eval


@flow(name="study", log_prints=True)
def study(study_path: str | None = None, profile: str | None = None, overrides: dict[str, Any] | None = None) -> str:
    """Returns the study id. ``study_path``: a study file (default: the built-in hybrid-vs-pure study);
    ``profile`` and ``overrides`` (dotted keys) replace the file's profile and add to its settings."""
    plan = steps.plan_study(study_path, profile, overrides)
    completed = {}
    for point in plan.pending:
        arguments = dict(profile=plan.profile, overrides=point.overrides, run_id=point.run_id, study_id=plan.study_id)
        parent = steps.parent_model(point)
        if parent:
            state = merge_eval(parent, **arguments, return_state=True)
        else:
            state = train_eval(**arguments, return_state=True)
        completed[point.run_id] = state.is_completed()
    steps.check_study(plan, completed)
    return plan.study_id
