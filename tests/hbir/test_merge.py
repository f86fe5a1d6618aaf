"""Merging with the base model through the CLI: `hbir train --set train.merge=...` (a weight, or auto on the dev
split) and `hbir merge --run R --weight W`, a run of its own with its parent, evaluated like any other."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hbir.core.config import MERGE_GRID
from models.encoder import BiEncoder
from tests.helpers import THREE_LANGUAGES, db_rows


@pytest.fixture
def smoke(three_language_data, db_path, tmp_path):
    return [
        "--profile", "smoke",
        "--set", f"data.dir={three_language_data}",
        "--set", f"data.languages=[{','.join(THREE_LANGUAGES)}]",
        "--set", f"db.path={db_path}",
        "--set", f"output.dir={tmp_path / 'runs'}",
    ]  # fmt: skip


def test_train_merge_saves_the_average_of_base_and_fine_tuned_weights(
    run_hbir, smoke, db_path, tmp_path, tiny_model_dir
):
    keep = ["--set", "train.keep_checkpoints_after_run=true"]  # the last checkpoint holds the weights as trained
    result = run_hbir("train", *smoke, "--set", "train.merge=0.5", *keep, "--run-id", "half")
    assert result.exit_code == 0, result.output
    assert db_rows(db_path, "SELECT merge_weight, selected_step FROM runs") == [(0.5, 4)]
    run = tmp_path / "runs" / "half"
    model = load_file(run / "model" / "model.safetensors")
    tuned = load_file(run / "checkpoints" / "step-000004" / "model.safetensors")  # the last weights, as trained
    base = BiEncoder.from_dir(tiny_model_dir).model.state_dict()
    for name, tensor in model.items():
        assert torch.allclose(tensor, (base[name] + tuned[name]) / 2, atol=1e-7), name


def test_train_merge_auto_picks_the_weight_on_the_dev_split(run_hbir, smoke, db_path, tmp_path):
    options = ["--set", "train.merge=auto", "--set", "train.eval_every=2", "--run-id", "auto"]
    result = run_hbir("train", *smoke, *options)
    assert result.exit_code == 0, result.output
    assert "merge=auto: dev score by weight" in result.output
    ((weight,),) = db_rows(db_path, "SELECT merge_weight FROM runs")
    assert weight in MERGE_GRID
    assert db_rows(db_path, "SELECT DISTINCT step FROM dev_metrics ORDER BY step") == [(2,), (4,)]


def test_hbir_merge_at_weight_0_evaluates_as_the_base_model(run_hbir, smoke, db_path):
    assert run_hbir("train", *smoke, "--run-id", "trained").exit_code == 0
    merged = run_hbir("merge", *smoke, "--run", "trained", "--weight", "0", "--run-id", "merged")
    assert merged.exit_code == 0, merged.output
    assert "xquad-r (3 mono, 6 cross, 3 multi)" in merged.output
    assert run_hbir("eval", *smoke, "--run-id", "base").exit_code == 0
    assert db_rows(db_path, "SELECT kind, parent_run_id, merge_weight, strategy FROM runs WHERE run_id = 'merged'") == [
        ("merge", "trained", 0.0, "hybrid")
    ]
    values = "SELECT setting, query_lang, corpus_lang, metric, value FROM metrics WHERE run_id = ? ORDER BY ALL"
    assert db_rows(db_path, values, "merged") == db_rows(db_path, values, "base")  # the same vectors, the same numbers


def test_hbir_merge_of_an_unknown_run_says_so(run_hbir, smoke):
    result = run_hbir("merge", *smoke, "--run", "nowhere", "--weight", "0.5")
    assert result.exit_code == 1 and "no run 'nowhere'" in result.output and "Traceback" not in result.output


def test_hbir_merge_auto_chooses_on_the_parent_runs_dev_split(run_hbir, smoke, db_path):
    assert run_hbir("train", *smoke, "--run-id", "trained").exit_code == 0  # data.dev_fraction 0.1: a dev split
    merged = run_hbir("merge", *smoke, "--run", "trained", "--weight", "auto", "--run-id", "auto")
    assert merged.exit_code == 0, merged.output
    assert "merge=auto: dev score by weight 0: " in merged.output
    ((weight, parent),) = db_rows(db_path, "SELECT merge_weight, parent_run_id FROM runs WHERE run_id = 'auto'")
    assert weight in MERGE_GRID and parent == "trained"


def test_hbir_merge_auto_without_a_dev_split_or_a_bad_weight_says_what_to_give(run_hbir, smoke, db_path):
    assert run_hbir("train", *smoke, "--set", "data.dev_fraction=0", "--run-id", "all").exit_code == 0
    result = run_hbir("merge", *smoke, "--run", "all", "--weight", "auto", "--run-id", "auto")
    assert result.exit_code == 1 and "there is none" in result.output and "give a weight" in result.output
    assert db_rows(db_path, "SELECT status FROM runs WHERE run_id = 'auto'") == [("failed",)]
    bad = run_hbir("merge", *smoke, "--run", "all", "--weight", "2")
    assert bad.exit_code == 2 and "expected a number from 0" in bad.output
