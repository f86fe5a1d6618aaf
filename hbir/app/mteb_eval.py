"""``hbir mteb``: a run's model on MTEB tasks, through MTEB itself (``mteb.evaluate`` with the model loaded by
sentence-transformers, whose ``query`` / ``document`` prompts are the run's prefixes).

MTEB is not a dependency of hbir and its task data come from the Hugging Face Hub (or its local cache): without
either, the command says so and what to do, and exits non-zero.
"""

from __future__ import annotations

import pandas as pd

from hbir.app.rankings import run_model
from hbir.core.config import Config
from hbir.core.errors import HbirError


def evaluate_on_mteb(config: Config, run_id: str, task_names: list[str]) -> pd.DataFrame:
    """One row per task: task, main score, and MTEB's full scores as JSON text."""
    try:
        import mteb
    except ImportError:
        raise HbirError(
            "MTEB is not installed: `pip install 'mteb>=2'` (its tasks' data also need the Hugging Face Hub, or "
            "its local cache)"
        ) from None
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(run_model(config, run_id).model_dir))
    try:
        tasks = mteb.get_tasks(tasks=task_names)
    except Exception as error:  # noqa: BLE001 - MTEB's own error types vary by version; its message names the task
        raise HbirError(f"MTEB does not know the tasks {task_names}: {error}") from None
    try:
        results = mteb.evaluate(model, tasks)
    except Exception as error:  # noqa: BLE001 - no network, no cached data, a task failing: all end here
        raise HbirError(
            f"MTEB could not run {', '.join(task_names)}: {type(error).__name__}: {str(error)[:300]} (offline, "
            "the tasks' datasets must be in the Hugging Face cache, HF_HOME)"
        ) from None
    return pd.DataFrame(
        [{"task": result.task_name, "main_score": result.get_score()} for result in results.task_results]
    )
