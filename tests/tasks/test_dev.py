"""The dev split and learning curves: held out by translation group, stable for a seed, measured during training
without changing it, and select=best keeps the checkpoint with the best dev score."""

from __future__ import annotations

import pandas as pd
import pytest
from safetensors.torch import load_file

from hbir.core.config import EvalConfig
from hbir.store import runs as store
from models.encoder import BiEncoder
from tasks.batching import training_pairs
from tasks.checkpoints import checkpoints
from tasks.dev import dev_score, dev_tables, evaluate_dev, split_pairs
from tasks.ingest import ingest_dataset
from tasks.training import best_dev_step, fine_tune
from tests.helpers import TINY_MODEL, toy_pairs, toy_train_cfg


@pytest.fixture(scope="module")
def mlqa(three_language_data):
    return ingest_dataset(three_language_data, "mlqa-r", ["de", "en", "zh"])


def test_the_split_holds_out_whole_translation_groups(mlqa):
    all_pairs = training_pairs(mlqa)
    train, dev = split_pairs(all_pairs, fraction=0.1, seed=0)
    groups = all_pairs["qid"].nunique()
    assert len(dev["mlqa-r"]) == round(0.1 * groups)
    # no question is on both sides in any language: every pair of a dev qid (all its translations) is held out
    assert not set(train["qid"]) & set(dev["mlqa-r"])
    assert len(train) + all_pairs["qid"].isin(dev["mlqa-r"]).sum() == len(all_pairs)


def test_the_split_is_a_function_of_the_seed(mlqa):
    all_pairs = training_pairs(mlqa)
    shuffled = all_pairs.sample(frac=1.0, random_state=7)  # row order does not matter
    assert split_pairs(all_pairs, 0.1, seed=0)[1] == split_pairs(shuffled, 0.1, seed=0)[1]
    assert split_pairs(all_pairs, 0.1, seed=0)[1] != split_pairs(all_pairs, 0.1, seed=1)[1]
    assert split_pairs(all_pairs, 0.0, seed=0)[1] == {"mlqa-r": []}


def test_dev_tables_keep_the_paragraphs_of_the_dev_answers(mlqa):
    qids = split_pairs(training_pairs(mlqa), 0.1, seed=0)[1]["mlqa-r"]
    dev = dev_tables(mlqa, qids)
    assert set(dev.queries["qid"]) == set(qids) and set(dev.qrels["qid"]) == set(qids)
    assert set(dev.qrels["cid"]) <= set(dev.candidates["cid"])
    # whole paragraphs: every sentence of a kept paragraph, not just the answers
    kept_docs = set(dev.candidates["doc_id"])
    assert len(dev.candidates) == mlqa.candidates["doc_id"].isin(kept_docs).sum() > len(dev.qrels)


def test_evaluate_dev_gives_setting_means(mlqa, tiny_model_dir):
    dev = dev_tables(mlqa, split_pairs(training_pairs(mlqa), 0.05, seed=0)[1]["mlqa-r"])
    encoder = BiEncoder.from_dir(tiny_model_dir, query_prefix="q: ", passage_prefix="p: ", max_length=32)
    rows = evaluate_dev(encoder, {"mlqa-r": dev}, EvalConfig())
    assert set(rows["setting"]) == {"mono", "cross", "multi"} and rows["value"].between(0, 1).all()
    assert 0 <= dev_score(rows) <= 1


def scripted(scores: list[float]):
    """A dev evaluation that returns these dev mAPs, one per call, whatever the encoder."""
    calls = iter(scores)

    def evaluate(encoder) -> pd.DataFrame:
        value = next(calls)
        return pd.DataFrame(
            [{"dataset": "toy", "setting": s, "metric": "map", "value": value} for s in ("mono", "cross", "multi")]
        )

    return evaluate


def test_select_best_keeps_the_best_dev_checkpoint(tiny_model_dir, tmp_path, db_path):
    log = store.TrainStepsLog(str(db_path), "best")
    # evaluated after steps 2, 4, 6 (eval_every 2); step 4 scores best, and its checkpoint outlives keep=1
    train = toy_train_cfg(eval_every=2, select="best", keep_checkpoints=1)
    result = fine_tune(
        tiny_model_dir, toy_pairs(), train, TINY_MODEL, tmp_path / "best", log, dev_eval=scripted([0.2, 0.6, 0.4])
    )
    curve = store.dev_curve(str(db_path), "best")
    assert sorted(set(curve["step"])) == [2, 4, 6] and best_dev_step(curve) == 4 and result.selected_step == 4
    kept = [path.name for path in checkpoints(tmp_path / "best" / "checkpoints")]
    assert kept == ["step-000004", "step-000006"]
    model = load_file(result.model_dir / "model.safetensors")
    at_4 = load_file(tmp_path / "best" / "checkpoints" / "step-000004" / "model.safetensors")
    at_6 = load_file(tmp_path / "best" / "checkpoints" / "step-000006" / "model.safetensors")
    assert all(torch_equal(model[name], at_4[name]) for name in model)
    assert not all(torch_equal(model[name], at_6[name]) for name in model)


def test_measuring_the_dev_split_does_not_change_training(tiny_model_dir, tmp_path, db_path):
    plain = fine_tune(
        tiny_model_dir, toy_pairs(), toy_train_cfg(), TINY_MODEL, tmp_path / "a", store.TrainStepsLog(str(db_path), "a")
    )
    train = toy_train_cfg(eval_every=3)  # select=last: the last weights
    measured = fine_tune(
        tiny_model_dir, toy_pairs(), train, TINY_MODEL, tmp_path / "b", store.TrainStepsLog(str(db_path), "b"),
        dev_eval=scripted([0.9, 0.1]),
    )  # fmt: skip
    assert measured.selected_step == 6 and sorted(set(store.dev_curve(str(db_path), "b")["step"])) == [3, 6]
    a, b = load_file(plain.model_dir / "model.safetensors"), load_file(measured.model_dir / "model.safetensors")
    assert all(torch_equal(a[name], b[name]) for name in a)


def test_best_dev_step_takes_the_earliest_of_a_tie():
    rows = pd.concat([scripted([0.5])(None).assign(step=step) for step in (2, 4)])
    assert best_dev_step(rows) == 2 and best_dev_step(rows.iloc[0:0]) is None


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
