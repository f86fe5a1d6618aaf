"""Training on several ranks (torchrun, gloo on the CPU) and with gradient caching trains what one process trains
with the whole batch: the same loss at every step and the same weights, for every batch strategy."""

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from hbir.app.records import run_record, training_fingerprint
from hbir.app.train_ranks import train_on_ranks
from hbir.core.config import Config
from hbir.core.errors import HbirError
from hbir.store.runs import TrainStepsLog, finish_run, start_run
from tasks.training import fine_tune
from tests.helpers import db_rows, toy_pairs

STEPS = 20


@pytest.fixture(scope="module")
def exact_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model without dropout: with dropout, ranks and micro-batches draw other masks than one pass."""
    out = tmp_path_factory.mktemp("models") / "tiny-no-dropout"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _config(tmp_path, model_dir, **train) -> Config:
    settings = {"batch_size": 16, "steps": STEPS, "checkpoint_every": 10, "lr": 2e-4, "warmup_ratio": 0.0}
    return Config.model_validate({
        "db": {"path": str(tmp_path / "results.duckdb")},
        "output": {"dir": str(tmp_path / "runs")},
        "model": {"source": f"path:{model_dir}", "max_length": 32},
        "train": settings | train,
    })  # fmt: skip


def _one_process(config: Config, run_id: str, pairs: pd.DataFrame):
    log = TrainStepsLog(config.db.path, run_id)
    model_dir = config.model.source.removeprefix("path:")
    out = fine_tune(model_dir, pairs, config.train, config.model, config.output.dir / run_id, log)
    return out.model_dir


def _losses(config: Config, run_id: str) -> list[float]:
    found = db_rows(config.db.path, f"SELECT step, loss FROM train_steps WHERE run_id = '{run_id}' ORDER BY step")
    assert [step for step, _ in found] == list(range(1, STEPS + 1))  # each step logged once
    return [loss for _, loss in found]


def _assert_same_weights(model_a, model_b):
    a, b = load_file(model_a / "model.safetensors"), load_file(model_b / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    toy_pairs(groups=40).to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("strategy", ["mono", "cross", "hybrid"])
def test_two_ranks_of_8_pairs_train_as_one_process_of_16(strategy, exact_model_dir, pairs_path, tmp_path):
    config = _config(tmp_path, exact_model_dir, strategy=strategy)
    alone = _one_process(config, "one", pd.read_parquet(pairs_path))
    lines = []
    ranked = config.model_copy(update={"train": config.train.model_copy(update={"nproc_per_node": 2})})
    result = train_on_ranks(ranked, "two", str(pairs_path), lines.append)

    torch.testing.assert_close(_losses(config, "two"), _losses(config, "one"), rtol=1e-5, atol=0)
    _assert_same_weights(result.model_dir, alone)
    assert any("training on 2 ranks" in line for line in lines)

    logged = [(tmp_path / "runs" / "two" / "ranks" / f"rank-{r}.jsonl").read_text() for r in (0, 1)]
    by_rank = [[json.loads(line) for line in text.splitlines()] for text in logged]
    assert [row["step"] for row in by_rank[0]] == [row["step"] for row in by_rank[1]] == list(range(1, STEPS + 1))
    for first, second in zip(*by_rank, strict=True):
        assert first["kind"] == second["kind"] and len(first["query_langs"]) == 8
        if first["kind"] == "mono":
            assert len(set(first["query_langs"] + second["query_langs"] + second["passage_langs"])) == 1
    kinds = {row["kind"] for row in by_rank[0]}
    assert kinds == {"hybrid": {"mono", "cross"}, "mono": {"mono"}, "cross": {"cross"}}[strategy]


def test_micro_batches_with_gradient_caching_train_as_one_pass(exact_model_dir, pairs_path, tmp_path):
    config = _config(tmp_path, exact_model_dir)
    pairs = pd.read_parquet(pairs_path)
    alone = _one_process(config, "one", pairs)
    cached = config.model_copy(update={"train": config.train.model_copy(update={"micro_batch_size": 4})})
    micro = _one_process(cached, "micro", pairs)
    torch.testing.assert_close(_losses(config, "micro"), _losses(config, "one"), rtol=1e-5, atol=0)
    _assert_same_weights(micro, alone)


def test_a_run_of_two_ranks_resumes_on_one_process_to_the_same_weights(exact_model_dir, pairs_path, tmp_path):
    """Checkpoints do not depend on the number of ranks: 2 ranks to step 10, then 1 process from there."""
    config = _config(tmp_path, exact_model_dir)
    alone = _one_process(config, "one", pd.read_parquet(pairs_path))
    ranked = config.model_copy(update={"train": config.train.model_copy(update={"nproc_per_node": 2})})
    train_on_ranks(ranked, "two", str(pairs_path), lambda line: None)
    checkpoints = tmp_path / "runs" / "two" / "checkpoints"
    shutil.rmtree(checkpoints / f"step-{STEPS:06d}")  # as if the ranks had stopped after step 10
    shutil.rmtree(tmp_path / "runs" / "two" / "model")
    lines = []
    resumed = fine_tune(
        exact_model_dir, pd.read_parquet(pairs_path), config.train, config.model, tmp_path / "runs" / "two",
        TrainStepsLog(config.db.path, "two"), lines.append,
    )  # fmt: skip
    assert resumed.resumed_from == 10 and "continuing from the checkpoint of step 10" in lines
    torch.testing.assert_close(_losses(config, "two"), _losses(config, "one"), rtol=1e-5, atol=0)
    _assert_same_weights(resumed.model_dir, alone)


def test_a_run_resumes_with_other_placement_settings_but_not_other_training_settings(tmp_path):
    record = run_record(Config.model_validate({"train": {"nproc_per_node": 2, "micro_batch_size": 4}}), "train", "r")
    db = str(tmp_path / "results.duckdb")
    start_run(db, record)
    finish_run(db, "r", "failed", error="killed")
    moved = run_record(Config.model_validate({"train": {"nproc_per_node": 1}}), "train", "r")
    assert start_run(db, moved, resume=True) is True
    assert db_rows(db, "SELECT world_size, micro_batch_size FROM runs") == [(1, None)]
    finish_run(db, "r", "failed", error="killed")
    other = run_record(Config.model_validate({"train": {"lr": 1e-4}}), "train", "r")
    with pytest.raises(HbirError, match="train.lr"):
        start_run(db, other, resume=True)


def test_placement_settings_leave_the_training_fingerprint_as_it_was():
    """Scheduled retraining retrains when the fingerprint changes: ranks, micro-batches and shards change nothing."""
    base = training_fingerprint(Config())
    moved = {
        "train": {"nproc_per_node": 4, "micro_batch_size": 8, "collective_timeout_s": 60},
        "eval": {"shard_size": 7},
    }
    assert training_fingerprint(Config.model_validate(moved)) == base
    assert training_fingerprint(Config.model_validate({"train": {"lr": 1e-4}})) != base
