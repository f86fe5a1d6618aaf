"""Fine-tuning: it learns, logs every step once, checkpoints, resumes exactly, and loads nothing unsafely."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from hbir.core.errors import HbirError
from hbir.store import runs as store
from tasks.checkpoints import checkpoints, load_checkpoint
from tasks.training import build_optimizer, fine_tune, load_encoder
from tests.helpers import TINY_MODEL, toy_pairs, toy_train_cfg


class FailAfter(store.TrainStepsLog):
    """A step log that dies when asked to write a step after ``last``: a crash between two checkpoints."""

    last: int = 4

    def write(self, rows: pd.DataFrame) -> None:
        if rows["step"].max() > self.last:
            raise KeyboardInterrupt
        super().write(rows)


def test_fine_tune_logs_every_step_once_and_saves_a_loadable_model(tiny_model_dir, tmp_path, db_path):
    log = store.TrainStepsLog(str(db_path), "run-a")
    result = fine_tune(
        tiny_model_dir, toy_pairs(), toy_train_cfg(strategy="hybrid"), TINY_MODEL, tmp_path / "run-a", log
    )

    curve = store.train_curve(str(db_path), "run-a")
    assert curve["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert set(curve["batch_kind"]) <= {"mono", "cross"}
    assert all(len(langs) == 4 for langs in curve["query_langs"])  # one language per pair of a batch of 4
    # warm-up 0, linear decay from 1e-3 to 0 over 6 steps: step s updates with lr 1e-3 * (6 - (s - 1)) / 6
    assert curve["lr"].tolist() == pytest.approx([1e-3 * (7 - s) / 6 for s in range(1, 7)])
    assert [path.name for path in checkpoints(tmp_path / "run-a" / "checkpoints")] == ["step-000004", "step-000006"]
    assert result.model_dir == tmp_path / "run-a" / "model" and result.resumed_from == 0
    reloaded = load_encoder(result.model_dir, TINY_MODEL, freeze_word_embeddings=False)
    assert reloaded.embed(["de frage 1?"], "query").shape == (1, 32)


def test_mono_and_cross_strategies_make_only_their_batch_kind(tiny_model_dir, tmp_path, db_path):
    for strategy, kind in (("mono", "mono"), ("cross", "cross")):
        log = store.TrainStepsLog(str(db_path), strategy)
        fine_tune(tiny_model_dir, toy_pairs(), toy_train_cfg(strategy=strategy), TINY_MODEL, tmp_path / strategy, log)
        curve = store.train_curve(str(db_path), strategy)
        assert set(curve["batch_kind"]) == {kind}
        langs = zip(curve["query_langs"], curve["passage_langs"], strict=True)
        same = [q == p for qs, ps in langs for q, p in zip(qs, ps, strict=True)]
        assert all(same) if kind == "mono" else not any(same)


def test_the_loss_falls_when_there_is_something_to_learn(tiny_model_dir, tmp_path, db_path):
    """Four groups, batch 4, one language: every step sees the same pairs, so the loss must drop well below log 4."""
    log = store.TrainStepsLog(str(db_path), "learn")
    train = toy_train_cfg(strategy="mono", steps=40, checkpoint_every=40, lr=3e-3)
    fine_tune(tiny_model_dir, toy_pairs(groups=4), train, TINY_MODEL, tmp_path / "learn", log)
    loss = store.train_curve(str(db_path), "learn")["loss"]
    assert loss.head(5).mean() > 1.0  # ~log 4 = 1.39 for a random model
    assert loss.tail(5).mean() < 0.5 * loss.head(5).mean()


def test_a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tiny_model_dir, tmp_path, db_path):
    db, train = str(db_path), toy_train_cfg(strategy="hybrid")
    whole = fine_tune(
        tiny_model_dir, toy_pairs(), train, TINY_MODEL, tmp_path / "whole", store.TrainStepsLog(db, "whole")
    )

    with pytest.raises(KeyboardInterrupt):  # dies after training steps 5 and 6, before logging them
        fine_tune(tiny_model_dir, toy_pairs(), train, TINY_MODEL, tmp_path / "cut", FailAfter(db, "cut"))
    assert store.train_curve(db, "cut")["step"].tolist() == [1, 2, 3, 4]
    resumed = fine_tune(
        tiny_model_dir, toy_pairs(), train, TINY_MODEL, tmp_path / "cut", store.TrainStepsLog(db, "cut")
    )

    assert resumed.resumed_from == 4
    assert store.train_curve(db, "cut")["step"].tolist() == [1, 2, 3, 4, 5, 6]
    columns = ["step", "loss", "lr", "batch_kind"]
    pd.testing.assert_frame_equal(store.train_curve(db, "cut")[columns], store.train_curve(db, "whole")[columns])
    expected, got = load_file(whole.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_steps_logged_after_the_last_checkpoint_are_trained_and_logged_again(tiny_model_dir, tmp_path, db_path):
    """A kill after a flush but before the next checkpoint: the resumed run must not log those steps twice."""
    db, train = str(db_path), toy_train_cfg(strategy="hybrid", checkpoint_every=3)
    log = store.TrainStepsLog(db, "r")
    fine_tune(tiny_model_dir, toy_pairs(), train, TINY_MODEL, tmp_path / "r", log)
    for later in checkpoints(tmp_path / "r" / "checkpoints")[1:]:  # as if it had died right after step 5's flush
        later.rename(later.with_name(".gone"))
    store.delete_train_steps_after(db, "r", 5)

    resumed = fine_tune(tiny_model_dir, toy_pairs(), train, TINY_MODEL, tmp_path / "r", log)
    assert resumed.resumed_from == 3
    assert store.train_curve(db, "r")["step"].tolist() == [1, 2, 3, 4, 5, 6]


def test_frozen_word_embeddings_stay_as_they_were(tiny_model_dir, tmp_path, db_path):
    log = store.TrainStepsLog(str(db_path), "frozen")
    result = fine_tune(
        tiny_model_dir, toy_pairs(), toy_train_cfg(freeze_word_embeddings=True), TINY_MODEL, tmp_path / "frozen", log
    )
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(result.model_dir / "model.safetensors")
    name = next(key for key in before if key.endswith("word_embeddings.weight"))
    assert torch.equal(before[name], after[name])
    assert not torch.equal(before["encoder.layer.0.attention.self.query.weight"],
                           after["encoder.layer.0.attention.self.query.weight"])  # fmt: skip


class Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_loading_a_checkpoint_never_unpickles_objects(tiny_model_dir, tmp_path, db_path):
    log = store.TrainStepsLog(str(db_path), "r")
    fine_tune(tiny_model_dir, toy_pairs(), toy_train_cfg(steps=2), TINY_MODEL, tmp_path / "r", log)
    checkpoint = checkpoints(tmp_path / "r" / "checkpoints")[-1]
    torch.save({"state": {}, "param_groups": [], "evil": Payload()}, checkpoint / "optimizer.pt")

    encoder = load_encoder(tiny_model_dir, TINY_MODEL, freeze_word_embeddings=False)
    optimizer = build_optimizer(encoder, 1e-3, 0.0, fused=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(HbirError, match=f"checkpoint {checkpoint} holds objects hbir does not load"):
        load_checkpoint(checkpoint, encoder, optimizer, scheduler)
