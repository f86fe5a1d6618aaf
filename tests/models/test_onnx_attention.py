"""Each attention of the export in one ONNX Runtime kernel: the vectors stay those of the exported graph, padding
included, and a rewrite that would change them is not kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.onnx_attention import fuse_attention, graph_outputs
from models.onnx_encoder import OnnxEncoder, _load, export_model
from models.onnx_encoder import check_feeds as onnx_encoder_check_feeds

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SHORT = "Wer schrieb Faust?"
LONG = "Who wrote Faust, the tragedy in two parts, and when did its first part appear in print? " * 3


@pytest.fixture(scope="module")
def unfused(tiny_model_dir, tmp_path_factory, monkeypatch_module) -> Path:
    """The tiny model exported as before the fusion (softmax NaN guards dropped)."""
    from models import onnx_encoder

    out = tmp_path_factory.mktemp("unfused") / "model.onnx"
    monkeypatch_module.setattr(onnx_encoder, "fuse_attention", lambda *args: 0)
    export_model(*_load(tiny_model_dir), out)
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def check_feeds(model_dir: Path) -> dict[str, np.ndarray]:
    """The export's own check batch for the tiny model: short pairs beside one of 512 tokens."""
    from transformers import AutoConfig, AutoTokenizer

    feeds = onnx_encoder_check_feeds(AutoTokenizer.from_pretrained(model_dir), AutoConfig.from_pretrained(model_dir))
    assert feeds["attention_mask"].shape[1] == 512 and feeds["attention_mask"][1].sum() < 10
    return feeds


def ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_the_exported_graph_has_each_attention_as_one_kernel(tiny_model_dir, tmp_path):
    OnnxEncoder.from_config(tiny_model_dir, _config(), "onnx", tmp_path, "fingerprint")
    (exported,) = tmp_path.glob("*.onnx")
    found = ops(exported)
    assert found.count("MultiHeadAttention") == 2  # random:tiny: 2 layers
    assert "Softmax" not in found and "IsNaN" not in found


def test_a_text_gets_the_same_vector_alone_and_beside_a_long_one(tiny_model_dir, tmp_path):
    """Padding is masked inside the fused kernel (a padded key's score lowered by MASK_OFFSET)."""
    encoder = OnnxEncoder.from_config(tiny_model_dir, _config(), "onnx", tmp_path, "fingerprint")
    alone = encoder.embed([SHORT], "query")
    padded = encoder.encode_batch(encoder.tokenize([SHORT, LONG], "query"))[:1]
    assert encoder.tokenize([SHORT, LONG], "query")["attention_mask"][0].eq(0).sum() > 20
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_the_unfused_export_has_no_nan_guard_after_the_softmax(unfused):
    """What the fusion starts from, and what a model it does not fit keeps: softmax straight into the product."""
    graph = onnx.load(str(unfused)).graph
    softmax_outputs = {node.output[0] for node in graph.node if node.op_type == "Softmax"}
    consumers = [node.op_type for node in graph.node for name in node.input if name in softmax_outputs]
    assert consumers == ["MatMul"] * 2
    assert "IsNaN" not in ops(unfused)


def test_the_fusion_gives_the_exported_graphs_outputs(tiny_model_dir, unfused, tmp_path):
    fused = tmp_path / "fused.onnx"
    fused.write_bytes(unfused.read_bytes())
    assert fuse_attention(fused, 2, check_feeds(tiny_model_dir)) == 2
    before, after = (graph_outputs(path, _padded_batch(tiny_model_dir))[0] for path in (unfused, fused))
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)


def test_a_fusion_that_changes_the_outputs_is_not_kept(tiny_model_dir, unfused, tmp_path, monkeypatch):
    """A rewrite that leaves the padding unmasked (its offset 0) is a different function on the padded check batch:
    the file stays as exported, and nothing is left beside it."""
    from models import onnx_attention

    monkeypatch.setattr(onnx_attention, "MASK_OFFSET", 0.0)
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(unfused.read_bytes())
    assert fuse_attention(copy, 2, check_feeds(tiny_model_dir)) == 0
    assert copy.read_bytes() == unfused.read_bytes()
    assert [path.name for path in tmp_path.iterdir()] == ["copy.onnx"]


def test_a_graph_the_rewrite_cannot_shape_keeps_its_ops(tiny_model_dir, unfused, tmp_path):
    """Three heads do not divide the tiny model's 32 channels (its biases cannot be laid out per head): the export
    keeps its own ops instead of failing."""
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(unfused.read_bytes())
    assert fuse_attention(copy, 3, check_feeds(tiny_model_dir)) == 0
    assert copy.read_bytes() == unfused.read_bytes()


def _config():
    from hbir.core.config import ModelConfig

    return ModelConfig(source="random:tiny", max_length=64)


def _padded_batch(model_dir: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(model_dir)([SHORT, LONG, "x"], padding=True, return_tensors="np"))
