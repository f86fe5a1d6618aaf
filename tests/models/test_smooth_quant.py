"""The rewrite for int8 (SmoothQuant scales, the feed-forward outputs' outlier channel on its own) keeps the model's
function in float32, finds an outlier channel where it is, and calibrates on the same random batches every time."""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer

from models.smooth_quant import OutlierSplitLinear, SmoothedLinear, calibration_batches, smooth_for_int8

TEXTS = ["Wer schrieb Faust?", "誰が『ファウスト』を書いたか", "Who wrote Faust, the tragedy in two parts, and when?"]


def load(model_dir):
    return AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def test_the_rewritten_model_computes_the_same_hidden_states(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).last_hidden_state
        smooth_for_int8(model, tokenizer)
        after = model(**batch).last_hidden_state
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    layer = model.encoder.layer[0]
    assert isinstance(layer.attention.self.query, SmoothedLinear)
    assert isinstance(layer.output.dense, OutlierSplitLinear)
    assert not torch.allclose(layer.attention.self.query.linear.weight, load(tiny_model_dir)[0].encoder.layer[0]
                              .attention.self.query.weight)  # fmt: skip  # the scales moved into the weights


def test_the_outlier_channel_is_the_one_far_above_the_rest(tiny_model_dir):
    """As e5-small's first token puts one feed-forward channel at 12-69 against 5-7 for the others."""
    model, tokenizer = load(tiny_model_dir)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.bias[17] = 40.0  # GELU(~40) = 40 for every token
    smooth_for_int8(model, tokenizer)
    assert model.encoder.layer[0].output.dense.outliers.tolist() == [17]
    assert model.encoder.layer[1].output.dense.outliers.tolist() != [17]


def test_the_calibration_batches_are_random_tokens_inside_the_special_tokens_the_same_every_time(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    batches = calibration_batches(tokenizer, model.config)
    again = calibration_batches(tokenizer, model.config)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))
    ids = batches[0]["input_ids"]
    assert (ids[:, 0] == tokenizer.cls_token_id).all() and (ids[:, -1] == tokenizer.sep_token_id).all()
    inner = ids[:, 1:-1]
    assert not torch.isin(inner, torch.tensor(tokenizer.all_special_ids)).any()
    assert {batch["input_ids"].shape[1] for batch in batches} == {16, 32, 64, 128}
