"""The ``scheduled-retrain`` flow: on a schedule (prefect.yaml), retrain when the training data or the settings
changed since the last retrained model, otherwise record a skipped run; a retrained model becomes champion only
if it beats the current champion's multilingual mAP on the evaluation data (``hbir/app/retrain.py``).

    prefect deployment run 'scheduled-retrain/scheduled-retrain' --watch    # what the cron schedule starts
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import steps
from flows.train_eval import train_eval


@flow(name="scheduled-retrain", log_prints=True)
def scheduled_retrain(
    profile: str = "cpu", config_path: str | None = None, overrides: dict[str, Any] | None = None
) -> str:
    """Returns the id of the run it recorded: the retrained one, or a skipped one."""
    config = steps.configure(profile, config_path, overrides)
    decision = steps.decide_retrain(config)
    if not decision.retrain:
        return steps.record_skipped(config, decision)
    run_id = train_eval(profile=profile, config_path=config_path, overrides=overrides)
    steps.promote(config, run_id)
    return run_id
