"""The rewrite for int8 (SmoothQuant scales, the feed-forward outputs' outlier channel on its own) keeps the model's
function in float32, finds an outlier channel where it is, and calibrates on the same random batches every time; the
bias correction rounds weights as ONNX Runtime does and takes their error off the outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from transformers import AutoModel, AutoTokenizer

from models.onnx_encoder import _quantize
from models.smooth_quant import (
    OutlierSplitLinear,
    SmoothedLinear,
    calibration_batches,
    int8_weights,
    smooth_for_int8,
)

TEXTS = ["Wer schrieb Faust?", "誰が『ファウスト』を書いたか", "Who wrote Faust, the tragedy in two parts, and when?"]


def load(model_dir):
    return AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def test_the_rewritten_model_computes_the_same_hidden_states(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).last_hidden_state
        smooth_for_int8(model, tokenizer, correct_biases=False)
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


def test_int8_weights_are_those_onnx_runtime_quantizes_a_weight_matrix_to(tmp_path):
    """The bias correction is computed for these weights: they must be the ones the int8 export runs."""
    pytest.importorskip("onnxruntime")
    weight = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))  # nn.Linear's (out, in)
    weight[2] = 0  # a channel of zeros
    inputs = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 40])
    output = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 6])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="product")], "one_product", [inputs], [output],
        [numpy_helper.from_array(weight.T.numpy().copy(), "w")],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "float32.onnx")
    _quantize(tmp_path / "float32.onnx", tmp_path / "int8.onnx")
    arrays = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "int8.onnx")).graph.initializer}
    (quantized,) = [array for array in arrays.values() if array.dtype == np.int8 and array.ndim == 2]
    (scale,) = [array for array in arrays.values() if array.dtype == np.float32 and array.shape == (6,)]
    np.testing.assert_array_equal(quantized.T * scale[:, None], int8_weights(weight).numpy())


def test_bias_correction_takes_the_int8_weights_mean_error_off_the_outputs(tiny_model_dir):
    """A channel far from zero in every token (as fine-tuned e5-small's) turns the weights' rounding error into an
    offset of every output: corrected, the model with int8 weights stays far closer to float32."""
    original, tokenizer = load(tiny_model_dir)
    with torch.no_grad():
        original.embeddings.LayerNorm.bias[5] = 6.0  # every token's channel 5 near 6 at the first layer's inputs
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")

    def int8_error(correct_biases: bool) -> float:
        """The mean over tokens of |hidden state - float32's| with every int8 product's weights rounded."""
        model, _ = load(tiny_model_dir)
        model.load_state_dict(original.state_dict())
        smooth_for_int8(model, tokenizer, correct_biases=correct_biases)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (SmoothedLinear, OutlierSplitLinear)):
                    module.linear.weight.copy_(int8_weights(module.linear.weight))
            error = model(**batch).last_hidden_state - original(**batch).last_hidden_state
        return error.mean(dim=(0, 1)).norm().item()

    uncorrected, corrected = int8_error(False), int8_error(True)
    assert corrected < uncorrected / 3, (corrected, uncorrected)
