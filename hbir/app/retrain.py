"""Scheduled retraining: retrain only when the training data or the settings changed, and keep as champion the
model with the best multilingual mAP on the evaluation data.

    decision = decide(config)           # compare training_fingerprint(config) with the last retrained model's
    if not decision.retrain:
        record_skipped(config, decision)   # a 'skipped' run that says why
    else:
        ... train and evaluate (the train-eval flow) ...
        promote(config, run_id)         # challenger and champion scored on the same, current evaluation data

The ``scheduled-retrain`` flow (``flows/scheduled_retrain.py``) chains these as Prefect tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from hbir.app import records, stages
from hbir.core.config import Config
from hbir.store import registry, runs

KIND = "scheduled-retrain"  # the kind of the runs a skipped retrain records


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    fingerprint: str  # training_fingerprint of the config now
    reason: str
    last_run: str | None  # the run that trained the newest retrained model


@dataclass(frozen=True)
class Promotion:
    run_id: str
    multi_map: float
    promoted: bool
    rival_run_id: str | None  # the champion it was compared with
    rival_multi_map: float | None
    note: str


def decide(config: Config) -> RetrainDecision:
    """Retrain unless the newest retrained model learnt from the same training data and settings."""
    fingerprint = records.training_fingerprint(config)
    last = registry.last_retrained(config.db.path, config.db.lock_timeout_s)
    if last is None:
        return RetrainDecision(True, fingerprint, "no model has been retrained yet", None)
    if last["inputs_fingerprint"] != fingerprint:
        reason = f"training data or settings changed since run {last['run_id']}"
        return RetrainDecision(True, fingerprint, reason, last["run_id"])
    reason = f"training data and settings unchanged since run {last['run_id']} (finished {last['finished_at']})"
    return RetrainDecision(False, fingerprint, reason, last["run_id"])


def record_skipped(config: Config, decision: RetrainDecision, run_id: str | None = None) -> str:
    """Record a ``skipped`` run with the decision's reason; returns its id."""
    run = replace(
        records.run_record(config, KIND, run_id),
        inputs_fingerprint=decision.fingerprint,
        note=decision.reason,
    )
    runs.record_skipped_run(config.db.path, run, config.db.lock_timeout_s)
    return run.run_id


def multi_map(config: Config, model_dir: str | Path, tables: dict[str, str]) -> float:
    """Multilingual mAP of a model: mean over ``data.eval`` of the mean over query languages (``run_summary``'s
    multi map), embeddings from the cache when the model and texts are unchanged."""
    from tasks.embedding import load_vectors
    from tasks.evaluation import evaluate
    from tasks.tables import load_tables

    scores = []
    for dataset in config.data.eval:
        vectors = load_vectors(stages.embed_tables(config, str(model_dir), tables[dataset], log=_quiet))
        metrics = evaluate(load_tables(tables[dataset], texts=False), vectors, config.eval).metrics
        scores.append(metrics.query("setting == 'multi' and metric == 'map'")["value"].mean())
    return float(sum(scores) / len(scores))


def _quiet(line: str) -> None:
    pass


def promote(config: Config, run_id: str) -> Promotion:
    """Score run ``run_id``'s model and the champion's on the current evaluation data (the same code, the same
    data); the new model becomes champion when there is none or it scores strictly higher. Recorded in ``models``,
    with a note on the run."""
    db, timeout = config.db.path, config.db.lock_timeout_s
    model_dir = runs.trained_model(db, run_id, timeout)
    tables = stages.ingest_tables(config, log=_quiet)
    score = multi_map(config, model_dir, tables)
    rival = registry.champion(db, timeout)
    rival_score = None
    if rival is None:
        promoted, note = True, f"champion: the first retrained model (multi mAP {score:.4f})"
    elif not (Path(rival["path"]) / "config.json").exists():
        promoted, note = True, f"champion: champion {rival['run_id']}'s model is gone from {rival['path']}"
    else:
        rival_score = multi_map(config, rival["path"], tables)
        promoted = score > rival_score
        verdict = "champion: beats" if promoted else "not promoted: does not beat"
        note = f"{verdict} champion {rival['run_id']} on multi mAP, {score:.4f} vs {rival_score:.4f}"
    model = {
        "run_id": run_id,
        "path": str(model_dir),
        "sha256": stages.model_sha256(model_dir),
        "eval_datasets": list(config.data.eval),
        "multi_map": score,
        "rival_run_id": None if rival is None else rival["run_id"],
        "rival_multi_map": rival_score,
    }
    registry.add_model(db, model, promoted, note, timeout)
    return Promotion(run_id, score, promoted, model["rival_run_id"], rival_score, note)
