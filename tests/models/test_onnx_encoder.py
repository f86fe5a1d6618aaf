"""The ONNX Runtime backend: float32 gives the torch encoder's vectors, int8 stays close to them, the export is made
once and cached by the model's fingerprint, and the backend is part of the embedding cache key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hbir.core.config import ModelConfig, load_config
from hbir.core.errors import ConfigError
from models.encoder import BiEncoder
from models.onnx_encoder import OnnxEncoder
from tasks.embedding import embed_texts, load_text_encoder, model_fingerprint, resolve_backend

pytest.importorskip("onnxruntime")

TEXTS = ["Wer schrieb Faust?", "誰が『ファウスト』を書いたか", "Who wrote Faust, the tragedy in two parts, and when?"]
CONTEXTS = ["Goethe schrieb ihn.", "ゲーテが書いた。" * 20, "Goethe, in 1808 and 1832."]
CONFIG = ModelConfig(source="random:tiny", max_length=64)


@pytest.fixture(scope="module")
def torch_encoder(tiny_model_dir) -> BiEncoder:
    return BiEncoder.from_config(tiny_model_dir, CONFIG).eval()


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def onnx_encoder(tiny_model_dir, onnx_dir, backend: str) -> OnnxEncoder:
    return OnnxEncoder.from_config(tiny_model_dir, CONFIG, backend, onnx_dir, model_fingerprint(tiny_model_dir))


def test_float32_onnx_gives_the_torch_vectors_for_texts_and_text_pairs(torch_encoder, tiny_model_dir, onnx_dir):
    encoder = onnx_encoder(tiny_model_dir, onnx_dir, "onnx")
    assert set(encoder.input_names) == set(encoder.tokenize(TEXTS, "passage", CONTEXTS))  # every input it makes
    for kind in ("query", "passage"):
        torch.testing.assert_close(encoder.embed(TEXTS, kind), torch_encoder.embed(TEXTS, kind), atol=1e-5, rtol=0)
    paired = encoder.embed(TEXTS, "passage", contexts=CONTEXTS)
    torch.testing.assert_close(paired, torch_encoder.embed(TEXTS, "passage", contexts=CONTEXTS), atol=1e-5, rtol=0)
    assert not torch.allclose(paired, encoder.embed(TEXTS, "passage"), atol=1e-3)  # the contexts were encoded


def test_int8_onnx_is_close_to_float32_with_unit_vectors(torch_encoder, tiny_model_dir, onnx_dir):
    encoder = onnx_encoder(tiny_model_dir, onnx_dir, "onnx-int8")
    quantized, exact = encoder.embed(TEXTS, "query"), torch_encoder.embed(TEXTS, "query")
    torch.testing.assert_close(quantized.norm(dim=1), torch.ones(3))
    assert (quantized * exact).sum(dim=1).min() > 0.95
    assert not torch.allclose(quantized, exact, atol=1e-6)  # the weights were quantized


def test_a_checkpoint_saved_in_bfloat16_exports_in_float32_and_int8(torch_encoder, tiny_model_dir, tmp_path):
    """transformers loads a bf16 checkpoint in bf16; the export starts from float32 all the same."""
    from transformers import AutoModel, AutoTokenizer

    bf16_dir = tmp_path / "bf16"
    AutoModel.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(bf16_dir)
    exact = torch_encoder.embed(TEXTS, "query")
    for backend in ("onnx", "onnx-int8"):
        vectors = onnx_encoder(bf16_dir, tmp_path / "onnx", backend).embed(TEXTS, "query")
        assert (vectors * exact).sum(dim=1).min() > 0.95  # the weights rounded to bf16 once


def test_int8_quantizes_every_weight_matrix_but_the_feed_forward_outlier_channel(tiny_model_dir, onnx_dir):
    onnx = pytest.importorskip("onnx")
    onnx_encoder(tiny_model_dir, onnx_dir, "onnx-int8")
    (quantized_file,) = onnx_dir.glob("*-onnx-int8.onnx")
    assert not list(onnx_dir.glob("*.float32.onnx")), "the smoothed float32 export is removed once quantized"
    graph = onnx.load(str(quantized_file)).graph
    weights = {tensor.name for tensor in graph.initializer}
    made_by = {name: node.op_type for node in graph.node for name in node.output}
    layers = 2  # random:tiny: per layer query, key, value, attention output, feed-forward input and output
    integer = [node for node in graph.node if node.op_type in ("DynamicQuantizeMatMul", "MatMulInteger")]
    assert len(integer) == 6 * layers
    float_products = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in weights]
    assert [made_by[node.input[0]] for node in float_products] == ["Gather"] * layers  # the outlier channel's own
    outlier_weights = [tensor for tensor in graph.initializer if tensor.name in {n.input[1] for n in float_products}]
    assert [list(tensor.dims) for tensor in outlier_weights] == [[1, 32]] * layers  # 1 of 64 channels, float32


def test_int8_weights_have_7_bits_so_no_cpu_saturates_their_sums(tiny_model_dir, onnx_dir):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    onnx_encoder(tiny_model_dir, onnx_dir, "onnx-int8")
    (quantized_file,) = onnx_dir.glob("*-onnx-int8.onnx")
    weights = [numpy_helper.to_array(tensor) for tensor in onnx.load(str(quantized_file)).graph.initializer]
    int8 = [array for array in weights if array.dtype == np.int8 and array.ndim == 2]
    assert len(int8) == 6 * 2  # the quantized products' weight matrices
    largest = max(int(np.abs(array.astype(np.int16)).max()) for array in int8)
    assert 2 * 255 * largest <= 32_767  # a pair of uint8 x int8 products fits AVX2's 16-bit sum
    assert largest > 32  # 7 bits used, not fewer


def test_the_export_is_made_once_per_model(tiny_model_dir, onnx_dir):
    onnx_encoder(tiny_model_dir, onnx_dir, "onnx")
    files = {path: path.stat().st_mtime_ns for path in onnx_dir.glob("*.onnx")}
    onnx_encoder(tiny_model_dir, onnx_dir, "onnx")
    assert {path: path.stat().st_mtime_ns for path in onnx_dir.glob("*.onnx")} == files
    assert not list(onnx_dir.glob("*.partial"))


def test_the_backend_is_part_of_the_embedding_cache_key(torch_encoder, tiny_model_dir, onnx_dir, tmp_path):
    fingerprint = model_fingerprint(tiny_model_dir)
    embed_texts(torch_encoder, fingerprint, TEXTS, "query", cache_dir=tmp_path)
    embed_texts(onnx_encoder(tiny_model_dir, onnx_dir, "onnx-int8"), fingerprint, TEXTS, "query", cache_dir=tmp_path)
    cached = sorted(tmp_path.glob("*.npy"))
    assert len(cached) == 2
    assert not np.array_equal(np.load(cached[0]), np.load(cached[1]))


def test_auto_is_torch_on_a_gpu_and_a_named_backend_is_that_one(tiny_model_dir):
    auto = CONFIG.model_copy(update={"backend": "auto"})
    assert resolve_backend(auto, torch.device("cuda"), tiny_model_dir, "unused") == "torch"
    as_onnx = CONFIG.model_copy(update={"backend": "onnx"})
    assert resolve_backend(as_onnx, torch.device("cuda"), tiny_model_dir, "unused") == "onnx"
    as_torch = CONFIG.model_copy(update={"backend": "torch"})
    assert isinstance(load_text_encoder(tiny_model_dir, as_torch, torch.device("cpu"), "unused"), BiEncoder)


def test_an_unknown_backend_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"model\.backend.*'torch', 'torch-bf16', 'onnx' or 'onnx-int8'"):
        load_config("smoke", None, {"model.backend": "tensorrt"})


def test_a_new_export_version_is_a_new_cache_key(tiny_model_dir, onnx_dir, monkeypatch):
    """A changed export or quantization must not be handed the vectors of the old one."""
    from models import onnx_encoder as module
    from tasks.embedding import block_name

    encoder = onnx_encoder(tiny_model_dir, onnx_dir, "onnx-int8")
    before = block_name(encoder, "fp", TEXTS, "query", None)
    monkeypatch.setattr(module, "EXPORT_VERSION", module.EXPORT_VERSION + 1)
    assert block_name(encoder, "fp", TEXTS, "query", None) != before


# Loads the encoder with a fresh export in a new process and prints how much higher the process is afterwards.
EXPORT_AND_MEASURE = """
import sys
from pathlib import Path
import onnxruntime, torch, transformers
from hbir.core.config import ModelConfig
from hbir.core.memory import give_back_freed_memory
from models.onnx_encoder import OnnxEncoder

def rss_mib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

give_back_freed_memory()
before = rss_mib()
model_dir, out_dir = map(Path, sys.argv[1:])
encoder = OnnxEncoder.from_config(model_dir, ModelConfig(source="random:tiny"), "onnx", out_dir, "fingerprint")
del encoder
give_back_freed_memory()
print(rss_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the RSS from /proc")
def test_the_export_leaves_nothing_in_the_process_that_embeds(tiny_model_dir, tmp_path):
    """Exported in the embedding process, the tiny model's export left ~130 MiB there (e5-small's 580 MiB), through
    every stage after it; in a process of its own, the session alone stays."""
    command = [sys.executable, "-c", EXPORT_AND_MEASURE, str(tiny_model_dir), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    assert list(tmp_path.glob("*.onnx")), "the export was made"
    assert float(done.stdout.strip().splitlines()[-1]) < 50


def test_a_failed_export_is_an_error_with_what_the_exporting_process_said(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(RuntimeError, match=r"(?s)_export_float32\(.*model\) failed.*Error"):
        OnnxEncoder.from_config(tmp_path / "model", CONFIG, "onnx", tmp_path / "onnx", "fingerprint")
    assert not list((tmp_path / "onnx").glob("*")), "no file, whole or partial"


def test_the_export_runs_this_code_whatever_the_working_directory_holds(tiny_model_dir, tmp_path, monkeypatch):
    """Run from another checkout (a models/ package of its own), the exporting process imported that one's code."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "onnx_encoder.py").write_text("raise ImportError('the working directory models/')\n")
    monkeypatch.chdir(tmp_path)
    OnnxEncoder.from_config(tiny_model_dir, CONFIG, "onnx", tmp_path / "onnx", "fingerprint")
    assert list((tmp_path / "onnx").glob("*.onnx"))


def test_an_export_says_when_it_runs_and_a_cached_one_says_nothing(tiny_model_dir, tmp_path):
    """e5-small's export is ~30 s with nothing else on screen: the run says what it is doing."""
    lines: list[str] = []
    OnnxEncoder.from_config(tiny_model_dir, CONFIG, "onnx", tmp_path, "fingerprint", log=lines.append)
    assert len(lines) == 2
    assert lines[0].startswith(f"exporting {tiny_model_dir} to ONNX") and str(tmp_path) in lines[0]
    assert lines[1].startswith("exported in ")
    OnnxEncoder.from_config(tiny_model_dir, CONFIG, "onnx", tmp_path, "fingerprint", log=lines.append)
    assert len(lines) == 2, "the export is cached"
