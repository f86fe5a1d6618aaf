"""The bi-encoder on ONNX Runtime: the same tokenizer, prefixes, mean pooling and L2 norm as ``BiEncoder``, the
transformer exported to ONNX, in float32 or with its weights quantized to int8. Embedding only (no training).

    encoder = OnnxEncoder.from_config(model_dir, model_cfg, "onnx-int8", cache_dir=models_cache_dir() / "onnx")
    vectors = encoder.embed(texts, "passage")   # (N, H) float32, unit length, as BiEncoder.embed

The export (``torch.onnx.export`` with the dynamo exporter: dynamic batch and sequence axes) outputs the pooled,
normalised embedding, so a batch is one ``InferenceSession.run``; each attention is then one ONNX Runtime kernel
(``models.onnx_attention``: e5-small 1.13x the texts/s in int8, 1.08x in float32). ``onnx-int8`` first rewrites the
model so that int8 loses less (``models.smooth_quant``: SmoothQuant scales; the feed-forward outputs' outlier
channel in float32 on its own; biases corrected for the int8 weights' mean error), then applies ONNX Runtime's
dynamic quantization (``quantize_dynamic``: weights per output channel in 7 bits, activations quantized to 8 on the
fly) to every matrix product with a weight matrix but those outlier channels' (``quantized_matmuls``), which runs
them with the CPU's integer instructions (AVX-512 VNNI, AVX2); 7-bit weights cannot saturate AVX2's 16-bit sums, so
every CPU computes the same int8 vectors (``_quantize``). The exported files are cached by the model's fingerprint,
so a model is exported once (e5-small: ~25 s, int8 ~35 s), in a process of its own (``in_own_process``). Float32
ONNX gives BiEncoder's vectors to ~1e-6; int8 moves them (cosine 0.9993 to float32 on e5-small, 0.997 on the ``hbir
run`` model; XQuAD-R mAP within 0.0035 on both) and what that costs in retrieval quality is measured in
``benchmarks/encode_throughput.py`` and the README.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from hbir.core.config import ModelConfig
from hbir.core.files import write_file
from models.encoder import TextEncoder, mean_pool, text_settings
from models.onnx_attention import fuse_attention
from models.smooth_quant import smooth_for_int8

OnnxBackend = Literal["onnx", "onnx-int8"]
# Bump when the export or the quantization below changes, so cached files are not reused.
EXPORT_VERSION = 7
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# a padded batch of text pairs on which the attention fusion must give the exported graph's outputs: short ones
# beside one as long as the model takes (most of the keys padded; the attention kernel's blocks of keys)
CHECK_TEXTS = (["an example", "x", "a longer example text " * 200], ["with a context", "y", "and its context " * 200])


class OnnxEncoder(TextEncoder):
    def __init__(
        self,
        model_path: Path,
        tokenizer: PreTrainedTokenizerBase,
        backend: OnnxBackend,
        query_prefix: str = "",
        passage_prefix: str = "",
        max_length: int = 128,
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Idle threads sleep instead of spinning: beside another job (training, a second Dask worker) spinning
        # threads fight for the cores. Tiny model, 2 cores: 3.4x the batches/s beside a training run, 6% fewer alone.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]
        self._hidden_size = self.session.get_outputs()[0].shape[-1]
        self.set_text_settings(tokenizer, query_prefix, passage_prefix, max_length)
        self.backend = backend

    @classmethod
    def from_config(
        cls,
        model_dir: str | Path,
        model_cfg: ModelConfig,
        backend: OnnxBackend,
        cache_dir: Path,
        model_fp: str,
        log: Callable[[str], None] | None = None,
    ) -> OnnxEncoder:
        """The model of ``model_dir`` (fingerprint ``model_fp``) exported for ``backend`` under ``cache_dir`` (once,
        saying so to ``log``), with the prefixes and maximum length of the ``model`` config section."""
        path = Path(cache_dir) / f"{model_fp}-v{EXPORT_VERSION}-{backend}.onnx"
        path = export_onnx(Path(model_dir), backend, path, log)
        return cls(path, AutoTokenizer.from_pretrained(model_dir), backend, **text_settings(model_cfg))

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def encoding(self) -> str:
        return f"{self.backend}-v{EXPORT_VERSION}"

    def encode_batch(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: features[name].numpy() for name in self.input_names}  # tokenize made them on the CPU
        return torch.from_numpy(self.session.run(None, feeds)[0])


class PooledEncoder(nn.Module):
    """A transformers model with ``BiEncoder``'s mean pooling and L2 norm, its inputs positional (for export)."""

    def __init__(self, model: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, inputs, strict=True))
        hidden = self.model(**features).last_hidden_state  # (B, T, H)
        return F.normalize(mean_pool(hidden, features["attention_mask"]), dim=-1)


def export_onnx(model_dir: Path, backend: OnnxBackend, path: Path, log: Callable[[str], None] | None = None) -> Path:
    """``path``, after exporting the model of ``model_dir`` to it if it is not there yet (float32 for ``onnx``;
    for ``onnx-int8`` rewritten for int8 by ``smooth_for_int8``, exported and quantized); written to a temporary
    file and renamed, so a killed export leaves nothing. An export says to ``log`` when it starts and how long it
    took (e5-small: ~25 s float32, ~35 s int8 with the fusion's check, with nothing else on screen)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log = log or (lambda line: None)
    function = {"onnx": "_export_float32", "onnx-int8": "_export_int8"}[backend]
    log(f"exporting {model_dir} to ONNX ({'float32' if backend == 'onnx' else 'int8'}), once for this model: {path}")
    start = time.perf_counter()
    write_file(path, lambda tmp: in_own_process(function, model_dir, tmp))
    log(f"exported in {time.perf_counter() - start:.0f} s")
    return path


def in_own_process(function: str, source: Path, out: Path) -> None:
    """``function(source, out)`` of this module in a Python process of its own, so the process that embeds never
    holds what exporting takes: e5-small's export peaked 2.2 GiB above where the process began and left it 580 MiB
    higher (the exporter's modules, the pages its allocator kept), through every stage after it; the tiny model's
    left ~130 MiB. It costs the new process's imports (~7 s on 2 cores). Its error is raised here with the end of
    what the process wrote."""
    code = f"import sys, pathlib; from {__name__} import {function}; {function}(*map(pathlib.Path, sys.argv[1:]))"
    # the installed project, as the ranks torchrun starts (hbir/app/train_ranks.py); -P: not a models/ package of the
    # working directory (``-c`` puts it first on sys.path: hbir run from another checkout imported that one's)
    command = [sys.executable, "-P", "-c", code, str(source), str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{function}({source}) failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")


def _export_float32(model_dir: Path, out: Path) -> None:
    export_model(*_load(model_dir), out)


def _export_int8(model_dir: Path, out: Path) -> None:
    """The model rewritten by ``smooth_for_int8``, exported in float32 beside ``out``, then quantized into it."""
    model, tokenizer = _load(model_dir)
    smooth_for_int8(model, tokenizer)
    float32 = out.with_name(f"{out.name}.float32.onnx")
    try:
        export_model(model, tokenizer, float32)
        _quantize(float32, out)
    finally:
        float32.unlink(missing_ok=True)


def _load(model_dir: Path) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    # float32 whatever the checkpoint's dtype (a bf16 one would load as bf16): the export's and int8's starting point
    model = AutoModel.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def export_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """``model`` with mean pooling and L2 norm (``PooledEncoder``) as one ONNX file, dynamic batch and sequence,
    each attention in one kernel where it gives the same outputs (``models.onnx_attention``)."""
    # a padded batch of text pairs: example values for every input (dynamic axes need sizes above 1), and the
    # inputs are those the tokenizer makes (BERT's token_type_ids tell a pair's two segments apart)
    example = tokenizer(["an example", "a longer example text"], ["with a context", "and"], padding=True,
                        return_tensors="pt")  # fmt: skip
    names = [name for name in INPUT_NAMES if name in example]
    axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            PooledEncoder(model, names).eval(),
            tuple(example[name] for name in names),
            str(out),
            dynamo=True,
            external_data=False,  # one file (e5-small: 470 MB; the format's limit is 2 GB)
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_shapes={"inputs": tuple(axes for _ in names)},  # forward(*inputs)
            verbose=False,
        )
    drop_softmax_nan_guards(out)
    heads = getattr(model.config, "num_attention_heads", None)
    if heads:
        fuse_attention(out, heads, check_feeds(tokenizer, model.config))


def check_feeds(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> dict[str, np.ndarray]:
    """``CHECK_TEXTS`` as the model's inputs, the long pair cut at the model's length (at most 512 tokens)."""
    longest = min(getattr(config, "max_position_embeddings", 512), 512)
    return dict(tokenizer(*CHECK_TEXTS, padding=True, truncation=True, max_length=longest, return_tensors="np"))


def drop_softmax_nan_guards(path: Path) -> int:
    """Remove the exporter's ``Where(IsNaN(p), 0, p)`` after each attention softmax ``p`` (SDPA's guard for a query
    row whose keys are all masked), rewriting the file at ``path``; the number removed. No row is all masked here:
    an encoder's mask hides padded keys only, and every text keeps at least its [CLS] and [SEP], so the guard never
    changes a value (the vectors are the same bit for bit) and only costs time: the two ops run over every batch x
    head x query x key score. Measured on e5-small, 1,000 XQuAD-R texts, an AVX2 CPU: without the guards float32
    runs at 1.02x and int8 at 1.05x the texts/s they have with them."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    made_by = {name: node for node in graph.node for name in node.output}
    guards, renamed = set(), {}
    for node in graph.node:
        test = made_by.get(node.input[0]) if node.op_type == "Where" else None
        if test is not None and test.op_type == "IsNaN" and test.input[0] == node.input[2]:
            if made_by.get(node.input[2]) is not None and made_by[node.input[2]].op_type == "Softmax":
                guards |= {id(node), id(test)}
                renamed[node.output[0]] = node.input[2]
    kept = [node for node in graph.node if id(node) not in guards]
    for node in kept:
        inputs = [renamed.get(name, name) for name in node.input]
        del node.input[:]
        node.input.extend(inputs)
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, str(path))
    return len(renamed)


def _quantize(float32: Path, out: Path) -> None:
    """Weights in 7 bits (``reduce_range``: -64..64): a CPU without VNNI (AVX2 only) multiplies uint8 activations by
    int8 weights with ``vpmaddubsw``, which adds each pair of products in 16 bits and saturates when both are near
    full scale (2 x 255 x 127 > 32,767); at 7 bits it cannot. Measured on e5-small, 1,000 XQuAD-R texts, a Zen 3 CPU
    (AVX2): cosine to float32 mean 0.9973 (min 0.9867) with 8-bit weights, 0.9987 (min 0.9958) with 7, same speed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_exporter():
        quantize_dynamic(
            str(float32), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
            nodes_to_quantize=quantized_matmuls(float32),
        )  # fmt: skip


def quantized_matmuls(model_path: Path) -> list[str]:
    """The matrix products with a weight matrix, but those of the feed-forward outputs' outlier channels (fed by a
    ``Gather`` of those channels: ``OutlierSplitLinear``), which stay float32."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {tensor.name for tensor in graph.initializer}
    constants |= {name for node in graph.node if node.op_type == "Constant" for name in node.output}
    made_by = {name: node.op_type for node in graph.node for name in node.output}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in constants and made_by.get(node.input[0]) != "Gather"
    ]


class _quiet_exporter:
    """Silence the exporter's and quantizer's progress lines and notes (torchvision not installed, ...)."""

    LOGGERS = ("", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")

    def __enter__(self) -> None:
        self.levels = {name: logging.getLogger(name).level for name in self.LOGGERS}
        for name in self.LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
