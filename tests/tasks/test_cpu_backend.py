"""``model.backend=auto`` on a CPU: the backend within the quality bound that encodes fastest on this CPU, timed
once per CPU and model shape and kept in the models cache; int8 only for a model whose int8 vectors stay close to
its float32 ones, checked once per model."""

from __future__ import annotations

import json

import pytest
import torch

from hbir.core.config import ModelConfig
from models.encoder import BiEncoder
from tasks import cpu_backend
from tasks.cpu_backend import fastest_cpu_backend, int8_agreement, ranked
from tasks.embedding import load_text_encoder, model_fingerprint

pytest.importorskip("onnxruntime")

AUTO = ModelConfig(source="random:tiny", max_length=64, backend="auto")


def test_auto_on_a_cpu_is_the_backend_timed_faster_here_once(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HBIR_CACHE_DIR", str(tmp_path))
    kept = []
    keep = cpu_backend.keep_agreement
    monkeypatch.setattr(cpu_backend, "keep_agreement", lambda *args: kept.append(args[0]) or keep(*args))
    said = []
    backend = fastest_cpu_backend(tiny_model_dir, AUTO, model_fingerprint(tiny_model_dir), said.append)
    assert len(kept) == 1  # by the timing, from its warm-up vectors, whichever backend is chosen
    (saved,) = (tmp_path / "models" / "backend").glob("[!i]*.json")
    timing = json.loads(saved.read_text())
    assert set(timing["texts_per_s"]) == set(cpu_backend.timed_backends()) and min(timing["texts_per_s"].values()) > 0
    # the timing's warm-up vectors are this model's int8 agreement: not encoded again
    (agreement,) = (tmp_path / "models" / "backend").glob("int8-*.json")
    assert 0.9 < json.loads(agreement.read_text())["mean_cosine"] <= 1.0 + 1e-6
    assert sum("to ONNX (int8)" in line for line in said) == 1
    order = ranked(timing["texts_per_s"])
    if backend != order[0]:  # int8 was the fastest, and its vectors of this model too far from float32's
        assert order[0] == "onnx-int8" and backend == order[1] and any("too far: not taken" in line for line in said)
    assert timing["threads"] == torch.get_num_threads() and timing["model"]["hidden_size"] == 32
    assert timing["backends"] == list(cpu_backend.timed_backends())  # a new candidate is timed again
    assert any("model.backend auto: timing torch, onnx, onnx-int8" in line for line in said)
    assert f"model.backend auto is {backend} on this CPU" in said[-1]

    def timed_again(*args, **kwargs):
        raise AssertionError("timed again")

    monkeypatch.setattr(cpu_backend, "texts_per_second", timed_again)
    encoder = load_text_encoder(tiny_model_dir, AUTO, torch.device("cpu"), model_fingerprint(tiny_model_dir))
    assert encoder.backend == backend
    assert isinstance(encoder, BiEncoder) == backend.startswith("torch")  # torch, torch-bf16: PyTorch
    # another model shape (here: another maximum length) is timed on its own
    monkeypatch.undo()
    monkeypatch.setenv("HBIR_CACHE_DIR", str(tmp_path))
    longer = AUTO.model_copy(update={"max_length": 32})
    fastest_cpu_backend(tiny_model_dir, longer, model_fingerprint(tiny_model_dir))
    assert len(list((tmp_path / "models" / "backend").glob("[!i]*.json"))) == 2  # timings, beside the agreements


def test_onnx_is_chosen_only_when_its_export_is_worth_it():
    assert ranked({"torch": 100.0, "onnx": 155.0})[0] == "onnx"
    assert ranked({"torch": 100.0, "onnx": 103.0})[0] == "torch"  # within ONNX_MARGIN: no export for 3%
    assert ranked({"torch": 124.1, "onnx": 109.6})[0] == "torch"
    assert ranked({"torch": 100.0, "onnx": 150.0, "torch-bf16": 200.0})[0] == "torch-bf16"
    assert ranked({"torch": 90.0, "onnx": 104.0, "torch-bf16": 100.0})[0] == "torch-bf16"
    assert ranked({"torch": 100.0, "onnx": 110.0, "onnx-int8": 200.0}) == ["onnx-int8", "onnx", "torch"]


def test_int8_is_taken_only_for_a_model_whose_int8_vectors_stay_close(tiny_model_dir, tmp_path, monkeypatch):
    """Where int8 is the fastest, its vectors of the model are compared with float32's once; too far, the next
    fastest backend encodes."""
    monkeypatch.setenv("HBIR_CACHE_DIR", str(tmp_path))
    speeds = {"torch": 100.0, "onnx": 120.0, "onnx-int8": 300.0}
    monkeypatch.setattr(cpu_backend, "texts_per_second", lambda *args: speeds)
    fingerprint = model_fingerprint(tiny_model_dir)
    said = []
    cosine = int8_agreement(tiny_model_dir, AUTO, fingerprint, said.append)
    (kept,) = (tmp_path / "models" / "backend").glob("int8-*.json")
    assert 0.9 < cosine <= 1.0 + 1e-6 and json.loads(kept.read_text())["mean_cosine"] == cosine
    assert any("exporting" in line for line in said)  # the int8 export, once

    monkeypatch.setattr(cpu_backend, "INT8_MIN_COSINE", cosine)
    assert fastest_cpu_backend(tiny_model_dir, AUTO, fingerprint) == "onnx-int8"
    monkeypatch.setattr(cpu_backend, "INT8_MIN_COSINE", cosine + 1e-4)
    said = []
    assert fastest_cpu_backend(tiny_model_dir, AUTO, fingerprint, said.append) == "onnx"
    assert any(f"cosine {cosine:.4f} to float32" in line and "too far: not taken" in line for line in said)
    assert not any("exporting" in line for line in said)  # measured once per model
    assert "model.backend auto is onnx on this CPU" in said[-1]


def test_int8_agreement_is_measured_only_where_int8_is_the_fastest(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HBIR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_backend, "texts_per_second", lambda *args: {"torch": 300.0, "onnx": 120.0,
                                                                         "onnx-int8": 200.0})  # fmt: skip
    assert fastest_cpu_backend(tiny_model_dir, AUTO, model_fingerprint(tiny_model_dir)) == "torch"
    assert not list((tmp_path / "models").rglob("int8-*")) and not list((tmp_path / "models").rglob("*int8.onnx"))


def test_a_failed_int8_export_leaves_int8_out_once_with_the_reason(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HBIR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_backend, "texts_per_second", lambda *args: {"torch": 100.0, "onnx-int8": 300.0})
    exports = []

    def failing_export(model_dir, backend, path, log=None):
        exports.append(backend)
        raise RuntimeError("quantize_dynamic: unsupported op")

    monkeypatch.setattr("models.onnx_encoder.export_onnx", failing_export)
    for _ in range(2):
        said = []
        assert fastest_cpu_backend(tiny_model_dir, AUTO, model_fingerprint(tiny_model_dir), said.append) == "torch"
        assert any("the int8 export failed: quantize_dynamic: unsupported op" in line for line in said)
    assert exports == ["onnx-int8"]  # not tried again for this model


def test_the_timing_leaves_int8_out_when_its_export_fails(tiny_model_dir, tmp_path, monkeypatch):
    from models import onnx_encoder

    monkeypatch.setenv("HBIR_CACHE_DIR", str(tmp_path))
    export = onnx_encoder.export_onnx

    def export_but_int8(model_dir, backend, path, log=None):
        if backend == "onnx-int8":
            raise RuntimeError("quantize_dynamic: unsupported op")
        return export(model_dir, backend, path, log)

    monkeypatch.setattr(onnx_encoder, "export_onnx", export_but_int8)
    said = []
    speeds = cpu_backend.texts_per_second(tiny_model_dir, AUTO, model_fingerprint(tiny_model_dir), said.append)
    assert set(speeds) == set(cpu_backend.timed_backends()) - {"onnx-int8"} and min(speeds.values()) > 0
    assert any("onnx-int8 left out, the int8 export failed: quantize_dynamic" in line for line in said)
    (kept,) = (tmp_path / "models" / "backend").glob("int8-*.json")  # not tried again for this model
    assert json.loads(kept.read_text())["mean_cosine"] == 0.0
