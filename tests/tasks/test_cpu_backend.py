"""``model.backend=auto`` on a CPU: the backend within the quality bound that encodes fastest on this CPU, timed
once per CPU and model shape and kept in the models cache."""

from __future__ import annotations

import json

import pytest
import torch

from hbir.core.config import ModelConfig
from models.encoder import BiEncoder
from tasks import cpu_backend
from tasks.cpu_backend import choose, fastest_cpu_backend
from tasks.embedding import load_text_encoder, model_fingerprint

pytest.importorskip("onnxruntime")

AUTO = ModelConfig(source="random:tiny", max_length=64, backend="auto")


def test_auto_on_a_cpu_is_the_backend_timed_faster_here_once(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HBIR_CACHE_DIR", str(tmp_path))
    said = []
    backend = fastest_cpu_backend(tiny_model_dir, AUTO, model_fingerprint(tiny_model_dir), said.append)
    (saved,) = (tmp_path / "models" / "backend").glob("*.json")
    timing = json.loads(saved.read_text())
    assert set(timing["texts_per_s"]) == set(cpu_backend.timed_backends()) and min(timing["texts_per_s"].values()) > 0
    assert backend == timing["backend"] == choose(timing["texts_per_s"])
    assert timing["threads"] == torch.get_num_threads() and timing["model"]["hidden_size"] == 32
    assert timing["backends"] == list(cpu_backend.timed_backends())  # a new candidate is timed again
    assert any("model.backend auto: timing torch, onnx" in line for line in said)
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
    assert len(list((tmp_path / "models" / "backend").glob("*.json"))) == 2


def test_onnx_is_chosen_only_when_its_export_is_worth_it():
    assert choose({"torch": 100.0, "onnx": 155.0}) == "onnx"
    assert choose({"torch": 100.0, "onnx": 103.0}) == "torch"  # within ONNX_MARGIN: no export for 3%
    assert choose({"torch": 124.1, "onnx": 109.6}) == "torch"
    assert choose({"torch": 100.0, "onnx": 150.0, "torch-bf16": 200.0}) == "torch-bf16"
    assert choose({"torch": 90.0, "onnx": 104.0, "torch-bf16": 100.0}) == "torch-bf16"
