"""Helpers the tests import (fixtures are in ``conftest.py``): project paths, the three languages the quick tests
use, a toy training set and its settings, reading the results database, running a study through the CLI."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
from click.testing import CliRunner

from hbir.cli import cli
from hbir.core.config import ModelConfig, TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
THREE_LANGUAGES = ["de", "en", "zh"]  # in both XQuAD-R and MLQA-R


def db_rows(db_path, sql: str, *params) -> list[tuple]:
    """The rows ``sql`` returns from the results database, read-only."""
    with duckdb.connect(str(db_path), read_only=True) as connection:
        return connection.execute(sql, list(params)).fetchall()


def run_study(root: Path, study: str, data_dir: Path, output_dir: Path):
    """Write ``study`` to root/study.yaml and run it once through the real CLI, with the results database at
    root/results.duckdb; returns ``hbir(*args)``, the CLI with that environment (for module-scoped fixtures)."""
    env = {"HBIR_DATA_DIR": str(data_dir), "HBIR_DB": str(root / "results.duckdb"), "HBIR_OUTPUT_DIR": str(output_dir)}

    def hbir(*args: str):
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=True)

    (root / "study.yaml").write_text(study, encoding="utf-8")
    result = hbir("study", "--config", str(root / "study.yaml"))
    assert result.exit_code == 0, result.output[-3000:]
    return hbir


TOY_LANGUAGES = ["de", "en", "es"]
TINY_MODEL = ModelConfig(source="random:tiny", max_length=32)


def toy_pairs(groups: int = 12) -> pd.DataFrame:
    """``groups`` questions in three languages, each with its own sentence: something a model can learn."""
    rows = [
        {"dataset": "toy", "qid": f"q{g}", "lang": lang, "query": f"{lang} frage {g}?", "passage": f"{lang} satz {g}."}
        for g in range(groups)
        for lang in TOY_LANGUAGES
    ]
    return pd.DataFrame(rows)


def toy_train_cfg(**changes) -> TrainConfig:
    return TrainConfig(
        **({"batch_size": 4, "steps": 6, "checkpoint_every": 2, "lr": 1e-3, "warmup_ratio": 0.0} | changes)
    )
